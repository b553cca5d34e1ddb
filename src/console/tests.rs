//! The console's templates render in every branch with the inputs their
//! handlers pass, and escape what they print.

use minijinja::context;
use minijinja::value::Value;

use super::pages::render_tests::frame_for_tests;
use crate::pages::Templates;

const HOSTILE: &str = "\"><script>alert('x')</script>&";

fn cases(x: &'static str) -> Vec<(&'static str, Value)> {
    let row = context! {
        time => x, message => x, event_type => x, result => "SUCCESS", badge => "ok", reason => Some(x),
        actor => x, client => Some(x),
        targets => vec![context! { name => x, href => Some(x) }, context! { name => x, href => None::<&str> }],
    };
    vec![
        (
            "console/users.html",
            context! {
                q => x, deleted => true, total => 2, shown => 1,
                rows => vec![context! { href => x, login => x, name => Some(x), email => None::<&str>, source => x, status => x }],
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/users.html",
            context! { q => "", deleted => false, total => 0, shown => 0, rows => Vec::<Value>::new(), ..frame_for_tests(x, x) },
        ),
        (
            "console/user.html",
            context! {
                notice => Some(x),
                user => context! {
                    id => x, login => x, name => Some(x), email => Some(x), phone => Some(x), groups => vec![x],
                    source => x, status => x, api => true, has_password => true,
                },
                action => x,
                factors => vec![
                    context! { id => x, name => x, factor_type => x, active => true, read_only => false, enrolled => Some(x), last_used => Some(x) },
                    context! { id => x, name => x, factor_type => x, active => false, read_only => true, enrolled => None::<&str>, last_used => None::<&str> },
                ],
                removable => true, locked_until => Some(x), recovery => true, codes_left => 3,
                sign_ins => vec![row.clone()], events => vec![row.clone()], events_href => x,
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/user.html",
            context! {
                notice => None::<&str>,
                user => context! {
                    id => x, login => x, name => None::<&str>, email => None::<&str>, phone => None::<&str>,
                    groups => Vec::<&str>::new(), source => x, status => x, api => false, has_password => false,
                },
                action => x, factors => Vec::<Value>::new(), removable => false, locked_until => None::<&str>,
                recovery => false, codes_left => None::<u32>, sign_ins => Vec::<Value>::new(),
                events => Vec::<Value>::new(), events_href => x,
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/events.html",
            context! {
                q => x,
                kinds => vec![context! { value => x, label => x, selected => true }],
                results => vec![context! { value => x, label => x, selected => false }],
                periods => vec![context! { value => x, label => x, selected => false }],
                rows => vec![row.clone()], older => Some(x), paged => true,
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/events.html",
            context! {
                q => "", kinds => Vec::<Value>::new(), results => Vec::<Value>::new(), periods => Vec::<Value>::new(),
                rows => Vec::<Value>::new(), older => None::<&str>, paged => false,
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/new_user.html",
            context! {
                form => context! { login => x, email => x, first_name => x, last_name => x, groups => x },
                errors => vec![x],
                ..frame_for_tests(x, x)
            },
        ),
        (
            "console/recovery_codes.html",
            context! { login => x, back => x, codes => vec![x, x], ..frame_for_tests(x, x) },
        ),
    ]
}

#[test]
fn every_console_page_renders_and_escapes() {
    let t = Templates::builtin().unwrap();
    for (name, ctx) in cases(HOSTILE) {
        let page = t
            .render(
                name,
                context! { prefix => "/_p", lang => "en", brand => crate::pages::brand_context(), ..ctx },
            )
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(page.contains("href=\"/_p/static/portal.css\""), "{name}: {page}");
        assert!(page.contains("/_p/console/static/console.css"), "{name}: {page}");
        assert!(!page.contains("<script>"), "{name}: {page}");
    }
    for (name, ctx) in cases("plain") {
        let page = t
            .render(
                name,
                context! { prefix => "/_p", lang => "en", brand => crate::pages::brand_context(), ..ctx },
            )
            .unwrap();
        if name != "console/users.html" {
            assert!(
                page.contains("name=\"csrf\" value=\"plain\"") || !page.contains("method=\"post\""),
                "{name}: every form carries the token"
            );
        }
        assert_eq!(
            page.matches("method=\"post\"").count(),
            page.matches("name=\"csrf\"").count(),
            "{name}: every form carries the token: {page}"
        );
    }
}
