//! Conformance cases for users and audit events (see the parent module).

use super::*;

fn user(id: &str, login: &str) -> UserRecord {
    UserRecord {
        id: id.into(),
        login: login.into(),
        status: UserStatus::Active,
        profile: json!({ "login": login, "email": format!("{login}@example.com"), "firstName": "Zoë" }),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        created: T,
        activated: Some(T),
        status_changed: Some(T),
        last_updated: T,
        password_changed: Some(T),
        seq: 0,
    }
}

fn written(w: UserWrite) -> UserRecord {
    match w {
        UserWrite::Written(u) => u,
        other => panic!("expected a write, got {other:?}"),
    }
}

pub(super) async fn users_round_trip_by_id_and_login_case_insensitively(store: SharedStore) {
    let alice = written(
        store
            .create_user(&user("00uA", "Alice.Ärger@Example.com"))
            .await
            .unwrap(),
    );
    assert!(alice.seq > 0, "the store assigns the change-log position");
    assert_eq!(
        UserRecord {
            seq: 0,
            ..alice.clone()
        },
        user("00uA", "Alice.Ärger@Example.com")
    );
    assert_eq!(store.get_user("00uA").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get_user("00ua").await.unwrap(), None, "ids are exact");
    assert_eq!(
        store.get_user_by_login("alice.ärger@example.com").await.unwrap(),
        Some(alice.clone()),
        "logins match case-insensitively, beyond ASCII too"
    );
    assert_eq!(store.get_user_by_login("alice").await.unwrap(), None);
    let mut staged = user("00uB", "bob");
    staged.status = UserStatus::Staged;
    staged.password_hash = None;
    staged.activated = None;
    staged.password_changed = None;
    let bob = written(store.create_user(&staged).await.unwrap());
    assert!(bob.seq > alice.seq);
    assert_eq!(store.get_user("00uB").await.unwrap(), Some(bob));
}

pub(super) async fn create_user_refuses_a_taken_login_and_an_existing_id(store: SharedStore) {
    written(store.create_user(&user("00uA", "carol")).await.unwrap());
    assert_eq!(
        store.create_user(&user("00uB", "CAROL")).await.unwrap(),
        UserWrite::LoginTaken
    );
    assert!(
        store.create_user(&user("00uA", "dave")).await.is_err(),
        "ids are never overwritten"
    );
    assert_eq!(store.get_user("00uB").await.unwrap(), None);
    assert_eq!(store.get_user("00uA").await.unwrap().unwrap().login, "carol");
}

pub(super) async fn list_users_pages_in_id_order(store: SharedStore) {
    for (id, login) in [("00uC", "c"), ("00uA", "a"), ("00ub", "b2"), ("00uB", "b")] {
        written(store.create_user(&user(id, login)).await.unwrap());
    }
    let ids = |v: Vec<UserRecord>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_users(None, 10).await.unwrap()),
        ["00uA", "00uB", "00uC", "00ub"],
        "byte order"
    );
    assert_eq!(ids(store.list_users(None, 2).await.unwrap()), ["00uA", "00uB"]);
    assert_eq!(
        ids(store.list_users(Some("00uB"), 2).await.unwrap()),
        ["00uC", "00ub"]
    );
    assert_eq!(
        ids(store.list_users(Some("00ub"), 2).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(ids(store.list_users(Some("00u"), 1).await.unwrap()), ["00uA"]);
}

pub(super) async fn update_user_patches_fields_and_sets_the_times(store: SharedStore) {
    let mut staged = user("00uA", "erin");
    staged.status = UserStatus::Staged;
    staged.activated = None;
    staged.status_changed = None;
    let before = written(store.create_user(&staged).await.unwrap());
    written(store.create_user(&user("00uB", "frank")).await.unwrap());

    // Only the profile.
    let profile = json!({ "login": "erin", "firstName": "Erin" });
    let u = written(
        store
            .update_user(
                "00uA",
                &UserPatch {
                    profile: Some(profile.clone()),
                    ..UserPatch::default()
                },
                T + 10,
            )
            .await
            .unwrap(),
    );
    assert_eq!(u.profile, profile);
    assert_eq!(u.last_updated, T + 10);
    assert_eq!(
        (u.status, u.status_changed, u.activated),
        (UserStatus::Staged, None, None)
    );
    assert_eq!(
        (u.password_hash.clone(), u.password_changed),
        (before.password_hash.clone(), before.password_changed)
    );
    assert!(u.seq > before.seq, "every write moves the user in the change log");

    // Activation and a new password.
    let u = written(
        store
            .update_user(
                "00uA",
                &UserPatch {
                    password_hash: Some("$argon2id$new".into()),
                    status: Some(UserStatus::Active),
                    ..UserPatch::default()
                },
                T + 20,
            )
            .await
            .unwrap(),
    );
    assert_eq!(u.password_hash.as_deref(), Some("$argon2id$new"));
    assert_eq!(u.password_changed, Some(T + 20));
    assert_eq!(
        (u.status, u.status_changed, u.activated),
        (UserStatus::Active, Some(T + 20), Some(T + 20))
    );

    // Suspending and unsuspending keeps the first activation time; the same status again changes nothing.
    for (status, at) in [
        (UserStatus::Suspended, T + 30),
        (UserStatus::Active, T + 40),
        (UserStatus::Active, T + 50),
    ] {
        written(
            store
                .update_user(
                    "00uA",
                    &UserPatch {
                        status: Some(status),
                        ..UserPatch::default()
                    },
                    at,
                )
                .await
                .unwrap(),
        );
    }
    let u = store.get_user("00uA").await.unwrap().unwrap();
    assert_eq!(
        (u.status, u.status_changed, u.activated, u.last_updated),
        (UserStatus::Active, Some(T + 40), Some(T + 20), T + 50)
    );

    // A new login: free ones are taken, a taken one (any case) is refused and changes nothing.
    let rename = |login: &str| UserPatch {
        login: Some(login.into()),
        profile: Some(json!({ "login": login })),
        ..UserPatch::default()
    };
    assert_eq!(
        store.update_user("00uA", &rename("FRANK"), T + 60).await.unwrap(),
        UserWrite::LoginTaken
    );
    assert_eq!(store.get_user("00uA").await.unwrap().unwrap().login, "erin");
    let u = written(store.update_user("00uA", &rename("Erin2"), T + 60).await.unwrap());
    assert_eq!(u.login, "Erin2");
    assert_eq!(
        store.get_user_by_login("erin2").await.unwrap().unwrap().id,
        "00uA"
    );
    assert_eq!(store.get_user_by_login("erin").await.unwrap(), None);
    assert_eq!(
        written(store.update_user("00uA", &rename("erin2"), T + 61).await.unwrap()).login,
        "erin2",
        "a user may change the case of their own login"
    );
    assert_eq!(
        store.update_user("00uX", &rename("x"), T).await.unwrap(),
        UserWrite::NotFound
    );
}

pub(super) async fn delete_user_removes_what_the_user_owned(store: SharedStore) {
    written(store.create_user(&user("00uA", "gina")).await.unwrap());
    written(store.create_user(&user("00uB", "hank")).await.unwrap());
    for (id, owner) in [("f-gina", "00uA"), ("f-hank", "00uB")] {
        store.insert_factor(&factor(id, owner, T, None)).await.unwrap();
        assert!(store.claim_totp_step(id, 5).await.unwrap());
        store
            .replace_recovery_codes(owner, &[format!("{owner}-code")], T)
            .await
            .unwrap();
    }
    assert!(store.delete_user("00uA", T + 5).await.unwrap());
    assert!(!store.delete_user("00uA", T + 6).await.unwrap(), "deleted once");
    assert_eq!(store.get_user("00uA").await.unwrap(), None);
    assert_eq!(store.get_user_by_login("gina").await.unwrap(), None);
    assert!(store.list_factors("00uA").await.unwrap().is_empty());
    assert_eq!(store.recovery_codes_left("00uA").await.unwrap(), 0);
    assert!(
        store.claim_totp_step("f-gina", 1).await.unwrap(),
        "the step record went with the factor"
    );
    // The other user keeps everything.
    assert_eq!(store.list_factors("00uB").await.unwrap().len(), 1);
    assert_eq!(store.recovery_codes_left("00uB").await.unwrap(), 1);
    assert!(!store.claim_totp_step("f-hank", 5).await.unwrap());
    // The login is free again, under a new id.
    written(store.create_user(&user("00uC", "GINA")).await.unwrap());
}

pub(super) async fn user_changes_come_in_order_after_the_cursor(store: SharedStore) {
    let start = store.users_changed_since(0, 100).await.unwrap();
    assert!(start.users.is_empty() && start.deleted.is_empty());
    let a = written(store.create_user(&user("00uA", "ivy")).await.unwrap());
    let b = written(store.create_user(&user("00uB", "jay")).await.unwrap());
    let all = store.users_changed_since(start.cursor, 100).await.unwrap();
    assert_eq!(all.users, [a.clone(), b.clone()]);
    assert_eq!(all.cursor, b.seq);
    let a2 = written(
        store
            .update_user(
                "00uA",
                &UserPatch {
                    status: Some(UserStatus::Suspended),
                    ..UserPatch::default()
                },
                T + 1,
            )
            .await
            .unwrap(),
    );
    assert!(store.delete_user("00uB", T + 2).await.unwrap());
    let next = store.users_changed_since(all.cursor, 100).await.unwrap();
    assert_eq!(
        next.users,
        std::slice::from_ref(&a2),
        "the current state of a changed user"
    );
    assert_eq!(next.deleted.len(), 1);
    assert_eq!(next.deleted[0].0, "00uB");
    assert!(next.deleted[0].1 > a2.seq);
    assert_eq!(next.cursor, next.deleted[0].1);
    // Bounded batches advance in order.
    let first = store.users_changed_since(0, 1).await.unwrap();
    assert_eq!((first.users, first.deleted.len()), (vec![a2.clone()], 0));
    let second = store.users_changed_since(first.cursor, 1).await.unwrap();
    assert_eq!((second.users.len(), second.deleted.len()), (0, 1));
    let none = store.users_changed_since(second.cursor, 1).await.unwrap();
    assert_eq!(
        (none.users.len(), none.deleted.len(), none.cursor),
        (0, 0, second.cursor)
    );
}

pub(super) async fn concurrent_creates_of_one_login_have_one_winner(store: SharedStore) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_user(&user(
                        &format!("00u{i:02}"),
                        if i % 2 == 0 { "kim" } else { "KIM" },
                    ))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            UserWrite::Written(_) => won += 1,
            UserWrite::LoginTaken => {}
            UserWrite::NotFound => panic!("not found on create"),
        }
    }
    assert_eq!(won, 1, "one login, one user");
    assert_eq!(store.list_users(None, 100).await.unwrap().len(), 1);
}

// ---- audit events --------------------------------------------------------

/// Milliseconds well past anything that could underflow.
const MS: i64 = 1_700_000_000_000;

fn audit_event(n: u32, published_ms: i64, event_type: &str, actor: &str) -> AuditRecord {
    AuditRecord {
        uuid: format!("uuid-{n:04}"),
        published_ms,
        event_type: event_type.to_owned(),
        search: format!("{event_type} {actor} event {n}").to_lowercase(),
        body: json!({ "uuid": format!("uuid-{n:04}"), "eventType": event_type, "actor": { "alternateId": actor } }),
        seq: 0,
    }
}

fn uuids(events: &[AuditRecord]) -> Vec<String> {
    events.iter().map(|e| e.uuid.clone()).collect()
}

fn all_audit() -> AuditQuery {
    AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    }
}

pub(super) async fn audit_events_round_trip_in_time_order(store: SharedStore) {
    // Inserted out of time order, in two batches; two share a millisecond.
    store
        .insert_audit_events(&[
            audit_event(1, MS + 20, "user.session.start", "alice"),
            audit_event(2, MS + 10, "user.account.lock", "bob"),
        ])
        .await
        .unwrap();
    store
        .insert_audit_events(&[audit_event(3, MS + 10, "user.session.end", "Alice")])
        .await
        .unwrap();
    store.insert_audit_events(&[]).await.unwrap();
    let got = store.query_audit_events(&all_audit()).await.unwrap();
    assert_eq!(uuids(&got), ["uuid-0002", "uuid-0003", "uuid-0001"]);
    assert_eq!(got[0].body["eventType"], "user.account.lock");
    assert_eq!(got[0].event_type, "user.account.lock");
    assert_eq!(got[0].published_ms, MS + 10);
    assert!(got[0].seq < got[1].seq, "seq breaks the tie in insertion order");
    assert_eq!(got[2].body, audit_event(1, 0, "user.session.start", "alice").body);
    let desc = store
        .query_audit_events(&AuditQuery {
            descending: true,
            ..all_audit()
        })
        .await
        .unwrap();
    assert_eq!(uuids(&desc), ["uuid-0001", "uuid-0003", "uuid-0002"]);
    // A uuid is never stored twice.
    assert!(
        store
            .insert_audit_events(&[audit_event(1, MS, "x", "y")])
            .await
            .is_err()
    );
    assert_eq!(store.query_audit_events(&all_audit()).await.unwrap().len(), 3);
}

pub(super) async fn audit_events_filter_by_time_and_text(store: SharedStore) {
    let events: Vec<AuditRecord> = (0..10)
        .map(|i| {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            audit_event(i, MS + i64::from(i) * 1000, "user.session.start", who)
        })
        .collect();
    store.insert_audit_events(&events).await.unwrap();
    // since inclusive, until exclusive.
    let got = store
        .query_audit_events(&AuditQuery {
            since_ms: Some(MS + 3000),
            until_ms: Some(MS + 7000),
            ..all_audit()
        })
        .await
        .unwrap();
    assert_eq!(uuids(&got), ["uuid-0003", "uuid-0004", "uuid-0005", "uuid-0006"]);
    let got = store
        .query_audit_events(&AuditQuery {
            q: Some("bob".into()),
            since_ms: Some(MS + 4000),
            ..all_audit()
        })
        .await
        .unwrap();
    assert_eq!(uuids(&got), ["uuid-0005", "uuid-0007", "uuid-0009"]);
    // Substring, not a pattern: `%` and `_` mean themselves.
    for q in ["%", "_", "ali_e"] {
        let got = store
            .query_audit_events(&AuditQuery {
                q: Some(q.into()),
                ..all_audit()
            })
            .await
            .unwrap();
        assert!(got.is_empty(), "{q}: {:?}", uuids(&got));
    }
    let got = store
        .query_audit_events(&AuditQuery {
            limit: 3,
            descending: true,
            ..all_audit()
        })
        .await
        .unwrap();
    assert_eq!(uuids(&got), ["uuid-0009", "uuid-0008", "uuid-0007"]);
}

pub(super) async fn audit_events_page_after_a_cursor_in_both_orders(store: SharedStore) {
    // Pairs of events share a millisecond, so the cursor needs the seq.
    let events: Vec<AuditRecord> = (0..9)
        .map(|i| audit_event(i, MS + i64::from(i / 2), "user.session.start", "alice"))
        .collect();
    store.insert_audit_events(&events).await.unwrap();
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .query_audit_events(&AuditQuery {
                    limit: 2,
                    after,
                    descending,
                    ..all_audit()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= 2);
            after = Some(AuditCursor {
                published_ms: last.published_ms,
                seq: last.seq,
            });
            seen.extend(uuids(&page));
        }
        let mut want: Vec<String> = uuids(&events);
        if descending {
            want.reverse();
        }
        assert_eq!(seen, want, "descending={descending}");
    }
}

/// Events stored out of time order (clocks of several replicas): a page
/// shorter than the matches holds the first of them in the asked order.
pub(super) async fn a_short_page_holds_the_first_events_in_order(store: SharedStore) {
    let times = [7, 2, 9, 0, 5, 8, 1, 6, 3, 4];
    let events: Vec<AuditRecord> = times
        .iter()
        .map(|&t| audit_event(t, MS + i64::from(t) * 1000, "user.session.start", "alice"))
        .collect();
    store.insert_audit_events(&events).await.unwrap();
    for (limit, descending, want) in [
        (3, false, &["uuid-0000", "uuid-0001", "uuid-0002"][..]),
        (3, true, &["uuid-0009", "uuid-0008", "uuid-0007"][..]),
        (1, false, &["uuid-0000"][..]),
        (
            9,
            true,
            &[
                "uuid-0009",
                "uuid-0008",
                "uuid-0007",
                "uuid-0006",
                "uuid-0005",
                "uuid-0004",
                "uuid-0003",
                "uuid-0002",
                "uuid-0001",
            ][..],
        ),
        (0, false, &[][..]),
    ] {
        let got = store
            .query_audit_events(&AuditQuery {
                limit,
                descending,
                ..all_audit()
            })
            .await
            .unwrap();
        assert_eq!(uuids(&got), want, "limit {limit}, descending {descending}");
    }
}

pub(super) async fn purge_audit_events_keeps_what_is_within_retention(store: SharedStore) {
    let events: Vec<AuditRecord> = (0..5)
        .map(|i| audit_event(i, MS + i64::from(i) * 1000, "user.session.start", "alice"))
        .collect();
    store.insert_audit_events(&events).await.unwrap();
    assert_eq!(store.purge_audit_events(MS + 2000).await.unwrap(), 2);
    assert_eq!(store.purge_audit_events(MS + 2000).await.unwrap(), 0);
    let got = store.query_audit_events(&all_audit()).await.unwrap();
    assert_eq!(uuids(&got), ["uuid-0002", "uuid-0003", "uuid-0004"]);
    // New events after a purge still sort after the old ones.
    store
        .insert_audit_events(&[audit_event(9, MS + 9000, "user.session.end", "alice")])
        .await
        .unwrap();
    let got = store.query_audit_events(&all_audit()).await.unwrap();
    assert_eq!(got.last().unwrap().uuid, "uuid-0009");
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
}
