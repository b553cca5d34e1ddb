#!/usr/bin/env python3
"""The official Okta Python SDK (PyPI `okta`, 3.x) against a running Portcullis.

Usage: PORTCULLIS_ADMIN_URL=http://127.0.0.1:9090 PORTCULLIS_ADMIN_TOKEN=... \
       OKTA_TESTING_TESTINGDISABLEHTTPSCHECK=true python3 tests/okta/sdk_check.py

Through the SDK's own methods: create a user, list users (paging with the
Link header), get the user, list the supported factors (catalog), enroll a
TOTP factor, get and list factors, unenroll, and read an Okta error. The SDK
3.x typed activate and verify request models carry no passCode, so those two
go over plain HTTP (only when a code is sent), and their answers are parsed
with the SDK's own models. The TOTP codes are computed here (pyotp, else
oathtool), never by the gateway.

With sms enabled (PORTCULLIS_MESSAGES_FILE: a `file` delivery's output):
enroll, resend too soon (429 E0000109 as an SDK error, then the SDK's own
retry after Date and X-Rate-Limit-Reset), activate and verify with the code
sent, a challenge through verify_factor. With push enabled (and
PORTCULLIS_PORTAL_URL): enroll, pair a device (Ed25519 via `cryptography`,
which the SDK depends on), verify_factor's 201 WAITING, the transaction
polled to SUCCESS, a cancelled push polled REJECTED, an unanswered one
TIMEOUT (after PORTCULLIS_PUSH_TTL seconds). Every answer must
deserialize without error. Exits non-zero on the first failure; never
prints a token, a secret or a code.
"""

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from okta.client import Client as OktaClient
from okta import models

ADMIN = os.environ["PORTCULLIS_ADMIN_URL"].rstrip("/")
TOKEN = os.environ["PORTCULLIS_ADMIN_TOKEN"]
# For sms and push: the gateway's portal URL (prefix included) where a push
# device pairs and answers, and the file a `file` delivery writes messages to
# (codes and pushes in clear: a development delivery, for tests like this).
PORTAL = os.environ.get("PORTCULLIS_PORTAL_URL", "").rstrip("/")
MESSAGES = os.environ.get("PORTCULLIS_MESSAGES_FILE", "")
# Set: sms and push must be enabled (the test config does), no skipping.
REQUIRE_OOB = os.environ.get("PORTCULLIS_REQUIRE_OOB") == "1"
# The gateway's factors.push.ttl in seconds (how long to wait for a TIMEOUT).
PUSH_TTL = float(os.environ.get("PORTCULLIS_PUSH_TTL", "60"))


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def totp(secret_b32, at=None):
    at = int(time.time()) if at is None else at
    try:
        import pyotp

        return pyotp.TOTP(secret_b32).at(at)
    except ImportError:
        out = subprocess.run(
            ["oathtool", "--totp", "-b", "--now", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)), secret_b32],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()


def http(method, path, body=None, base=None, token=True):
    """A plain request (with the admin token unless `token` is false) to
    `base` (the admin listener by default): (status, headers, JSON or None)."""
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"SSWS {TOKEN}"
    url = path if path.startswith("http") else (base or ADMIN) + path
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            raw = res.read()
            return res.status, dict(res.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, dict(e.headers), json.loads(raw) if raw else None


def fresh_step_code(secret):
    """A code from a time step no earlier code used (replay protection)."""
    now = int(time.time())
    wait = 30 - now % 30
    time.sleep(wait + 0.5)
    return totp(secret)


def messages():
    """What the `file` delivery wrote so far."""
    try:
        with open(MESSAGES, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def last_message(**match):
    """The last message whose fields equal `match` (waits up to 5 s)."""
    deadline = time.time() + 5
    while True:
        found = [m for m in messages() if all(m.get(k) == v for k, v in match.items())]
        if found:
            return found[-1]
        if time.time() > deadline:
            print(f"FAIL: no message with {sorted(match)}")
            sys.exit(1)
        time.sleep(0.05)


def value(e):
    """An SDK enum's value (or the string itself)."""
    return e.value if hasattr(e, "value") else e


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Device:
    """A push device (SPEC section 8): an Ed25519 key, paired through the
    gateway's device API, signing its answers. Not an Okta API: plain HTTP."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.key = Ed25519PrivateKey.generate()
        self.public = b64url(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def pair(self, activation_token):
        return http("POST", "/api/v1/push/devices", {
            "activationToken": activation_token, "publicKey": self.public,
            "deviceName": "SDK check phone", "address": "relay:sdk-check",
        }, base=PORTAL, token=False)

    def answer(self, push, decision, number):
        text = "\n".join(["portcullis-push-v1", push["transaction_id"], push["factor_id"], decision,
                          str(number), push["expires_at"]])
        signature = b64url(self.key.sign(text.encode()))
        return http("POST", f"/api/v1/push/transactions/{push['transaction_id']}",
                    {"decision": decision, "number": number, "signature": signature},
                    base=PORTAL, token=False)


async def check_sms(client, uid):
    """SMS through the SDK: enroll, resend too soon (429 without and with the
    SDK's retry), activate and verify with the code sent, a challenge, unenroll."""
    body = models.UserFactorSMS(factorType="sms", provider="OKTA",
                                profile=models.UserFactorSMSProfile(phoneNumber="+15555550100"))
    sms, _, err = await client.enroll_factor(uid, body)
    check(err is None and isinstance(sms, models.UserFactorSMS), f"enroll_factor sms: {err}")
    check(sms.status == models.UserFactorStatus.PENDING_ACTIVATION, "sms enrolled PENDING_ACTIVATION")
    check(sms.profile.phone_number == "+15555550100", "the sms profile round-trips")
    check(sms.links.activate is not None and sms.links.resend is not None, "the sms factor links activate and resend")
    first = last_message(kind="sms", to="+15555550100")

    # Too soon: the 429 is an Okta error the SDK deserializes (no retries).
    resend = models.ResendUserFactor(factorType="sms")
    _, resp, err = await client.resend_enroll_factor(uid, sms.id, resend)
    check(err is not None and getattr(err, "error_code", None) == "E0000109",
          f"resend_enroll_factor too soon is 429 E0000109 ({err})")
    headers = resp.headers if resp is not None else {}
    check(resp is not None and resp.status == 429 and "Date" in headers and "X-Rate-Limit-Reset" in headers,
          "the 429 carries Date and X-Rate-Limit-Reset")
    # The SDK's own 429 branch: it reads Date and X-Rate-Limit-Reset, waits, retries.
    retrying = OktaClient({"orgUrl": ADMIN, "token": TOKEN, "rateLimit": {"maxRetries": 1}})
    started = time.time()
    resent, resp, err = await retrying.resend_enroll_factor(uid, sms.id, resend)
    waited = time.time() - started
    check(err is None and isinstance(resent, models.ResendUserFactor) and value(resent.factor_type) == "sms",
          f"resend_enroll_factor retried after the reset parses as ResendUserFactor ({err})")
    check(waited >= 1, f"the SDK waited for X-Rate-Limit-Reset ({waited:.1f}s)")
    code = last_message(kind="sms", to="+15555550100")["code"]
    check(code != first["code"], "the resend sent a new code")

    # Activate over plain HTTP (the SDK's activate model has no passCode).
    status, _, answer = http("POST", f"/api/v1/users/{uid}/factors/{sms.id}/lifecycle/activate", {"passCode": code})
    check(status == 200 and models.UserFactor.from_dict(answer).status == models.UserFactorStatus.ACTIVE,
          f"sms activate with the code sent answers ACTIVE (got {status})")
    # Verify without a body through the SDK: a code is sent (CHALLENGE).
    time.sleep(2.1)  # resend_after
    result, resp, err = await client.verify_factor(uid, sms.id)
    check(err is None and isinstance(result, models.UserFactorVerifyResponse)
          and value(result.factor_result) == "CHALLENGE", f"verify_factor sms without a code is CHALLENGE ({err})")
    code = last_message(kind="sms", to="+15555550100")["code"]
    # Right away again: 429 (too soon), an error verify_factor deserializes too.
    _, resp, err = await client.verify_factor(uid, sms.id)
    check(err is not None and getattr(err, "error_code", None) == "E0000109", f"verify_factor too soon is 429 ({err})")
    status, _, answer = http("POST", f"/api/v1/users/{uid}/factors/{sms.id}/verify", {"passCode": code})
    check(status == 200 and value(models.UserFactorVerifyResponse.from_dict(answer).factor_result) == "SUCCESS",
          f"sms verify with the code sent is SUCCESS (got {status})")
    got, _, err = await client.get_factor(uid, sms.id)
    check(err is None and isinstance(got, models.UserFactorSMS), f"get_factor sms: {err}")
    _, _, err = await client.unenroll_factor(uid, sms.id)
    check(err is None, f"unenroll_factor sms: {err}")


async def check_push(client, uid):
    """Push through the SDK: enroll, pair a device (its own API), verify (201
    WAITING), poll to SUCCESS, cancel a second push (REJECTED), unenroll."""
    push, _, err = await client.enroll_factor(uid, models.UserFactorPush(factorType="push", provider="OKTA"))
    check(err is None and isinstance(push, models.UserFactorPush), f"enroll_factor push: {err}")
    check(push.status == models.UserFactorStatus.PENDING_ACTIVATION, "push enrolled PENDING_ACTIVATION")
    token = push.embedded["activation"]["activationToken"]
    device = Device()
    status, _, paired = device.pair(token)
    check(status == 200 and paired["status"] == "ACTIVE", f"the device pairs (got {status})")
    got, _, err = await client.get_factor(uid, push.id)
    check(err is None and got.status == models.UserFactorStatus.ACTIVE, f"get_factor push is ACTIVE: {err}")
    check(got.profile.name is None or isinstance(got.profile.name, str), "the push profile parses")

    # Verify: 201 WAITING, parsed by the SDK as UserFactorVerifyResponseWaiting.
    waiting, resp, err = await client.verify_factor(uid, push.id)
    check(err is None and resp.status_code == 201 and isinstance(waiting, models.UserFactorVerifyResponseWaiting),
          f"verify_factor push answers 201 UserFactorVerifyResponseWaiting ({err})")
    check(value(waiting.factor_result) == "WAITING", "the push is WAITING")
    number = waiting.embedded.challenge.correct_answer
    check(isinstance(number, int) and 10 <= number <= 99, "the answer carries the number to show")
    check(waiting.links.poll is not None and waiting.links.cancel is not None, "the answer links poll and cancel")
    tid = waiting.links.poll.href.rsplit("/", 1)[1]
    tx, _, err = await client.get_factor_transaction_status(uid, push.id, tid)
    check(err is None and value(tx.factor_result) == "WAITING", f"get_factor_transaction_status: WAITING ({err})")
    status, _, answer = device.answer(last_message(kind="push", transaction_id=tid), "approve", number)
    check(status == 200 and answer["factorResult"] == "SUCCESS", f"the device approves (got {status})")
    tx, _, err = await client.get_factor_transaction_status(uid, push.id, tid)
    check(err is None and value(tx.factor_result) == "SUCCESS", f"the poll says SUCCESS ({err})")

    # Cancel (Okta: DELETE on the transaction href; the SDK has no method for it).
    waiting, resp, err = await client.verify_factor(uid, push.id)
    check(err is None and resp.status_code == 201, f"a second push ({err})")
    tid = waiting.links.cancel.href.rsplit("/", 1)[1]
    status, _, answer = http("DELETE", waiting.links.cancel.href)
    check(status == 200 and answer["factorResult"] == "REJECTED", f"cancelling answers REJECTED (got {status})")
    tx, _, err = await client.get_factor_transaction_status(uid, push.id, tid)
    check(err is None and value(tx.factor_result) == "REJECTED", f"a cancelled push polls REJECTED ({err})")
    status, _, answer = device.answer(last_message(kind="push", transaction_id=tid), "approve",
                                      waiting.embedded.challenge.correct_answer)
    check(status == 403 and answer["errorCode"] == "E0000079", f"the device's late answer is refused (got {status})")
    # No answer before the expiry (the test config's push ttl is 5 s): TIMEOUT.
    waiting, resp, err = await client.verify_factor(uid, push.id)
    check(err is None and resp.status_code == 201, f"a third push ({err})")
    tid = waiting.links.poll.href.rsplit("/", 1)[1]
    time.sleep(PUSH_TTL + 0.5)
    tx, _, err = await client.get_factor_transaction_status(uid, push.id, tid)
    check(err is None and value(tx.factor_result) == "TIMEOUT", f"an unanswered push polls TIMEOUT ({err})")
    _, _, err = await client.get_factor_transaction_status(uid, push.id, "ptxNoSuchTransaction")
    check(err is not None and getattr(err, "error_code", None) == "E0000191", f"an unknown transaction is E0000191 ({err})")
    _, _, err = await client.unenroll_factor(uid, push.id)
    check(err is None, f"unenroll_factor push: {err}")


async def main():
    client = OktaClient({
        "orgUrl": ADMIN,
        "token": TOKEN,
        "rateLimit": {"maxRetries": 0},
    })
    login = f"sdk.user.{int(time.time() * 1000)}@example.com"

    # Create (with a password), through the SDK's model and method.
    body = models.CreateUserRequest(
        profile=models.UserProfile(login=login, email=login, firstName="Sdk", lastName="User", mobilePhone="+15555550100"),
        credentials=models.UserCredentialsWritable(password=models.PasswordCredential(value="sdk-password-123")),
    )
    user, resp, err = await client.create_user(body, activate=True)
    check(err is None and isinstance(user, models.User), f"create_user: {err}")
    check(user.id.startswith("00u") and len(user.id) == 20, "the user id is Okta-shaped")
    check(user.status == models.UserStatus.ACTIVE, "the new user is ACTIVE")
    check(user.profile.login == login, "the profile round-trips")
    uid = user.id

    # Get by id and by login.
    got, _, err = await client.get_user(uid)
    check(err is None and got.id == uid, f"get_user by id: {err}")
    got, _, err = await client.get_user(login)
    check(err is None and got.id == uid, f"get_user by login: {err}")

    # List, one page and all pages (the SDK follows `Link: rel="next"`).
    users, resp, err = await client.list_users(limit=1)
    check(err is None and len(users) == 1, f"list_users limit=1: {err}")
    from okta.pagination import PaginationHelper

    everyone, cursor, pages = list(users), PaginationHelper.extract_next_cursor(resp.headers), 1
    while cursor and pages < 100:
        page, resp, err = await client.list_users(limit=1, after=cursor)
        check(err is None, f"list_users page {pages + 1}: {err}")
        everyone.extend(page)
        cursor, pages = PaginationHelper.extract_next_cursor(resp.headers), pages + 1
    check(pages > 1, f"the Link header led through {pages} pages")
    check(any(u.id == uid for u in everyone), f"paging finds the new user among {len(everyone)}")
    check(len({u.id for u in everyone}) == len(everyone), "no user twice across pages")

    # The factor catalog.
    supported, _, err = await client.list_supported_factors(uid)
    check(err is None and len(supported) > 0, f"list_supported_factors: {err}")
    check(any(f.factor_type == models.UserFactorType.TOKEN_COLON_SOFTWARE_COLON_TOTP for f in supported),
          "the catalog offers token:software:totp")

    # Enroll TOTP (Google Authenticator).
    factor_body = models.UserFactorTokenSoftwareTOTP(factorType="token:software:totp", provider="GOOGLE")
    factor, _, err = await client.enroll_factor(uid, factor_body)
    check(err is None and factor is not None, f"enroll_factor: {err}")
    check(factor.status == models.UserFactorStatus.PENDING_ACTIVATION, "enrolled PENDING_ACTIVATION")
    fid = factor.id
    activation = (factor.embedded or {}).get("activation") or {}
    secret = activation.get("sharedSecret")
    check(secret and activation.get("encoding") == "base32", "the activation has a base32 shared secret")
    check(factor.links is not None and factor.links.activate is not None, "the factor links to its activation")
    qr = activation["_links"]["qrcode"]["href"]
    req = urllib.request.Request(qr, headers={"Authorization": f"SSWS {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as res:
        check(res.status == 200 and res.headers["Content-Type"] == "image/svg+xml", "the QR code is served while pending")

    # Activate and verify over plain HTTP; parse the answers with the SDK's models.
    status, _, answer = http("POST", f"/api/v1/users/{uid}/factors/{fid}/lifecycle/activate", {"passCode": totp(secret)})
    check(status == 200, f"activate answers 200 (got {status})")
    activated = models.UserFactor.from_dict(answer)
    check(activated.status == models.UserFactorStatus.ACTIVE, "activate answer parses as ACTIVE UserFactor")
    status, _, answer = http("POST", f"/api/v1/users/{uid}/factors/{fid}/verify", {"passCode": fresh_step_code(secret)})
    check(status == 200, f"verify answers 200 (got {status})")
    result = models.UserFactorVerifyResponse.from_dict(answer)
    check(str(result.factor_result.value if hasattr(result.factor_result, "value") else result.factor_result) == "SUCCESS",
          "verify answer parses with factorResult SUCCESS")
    status, _, answer = http("POST", f"/api/v1/users/{uid}/factors/{fid}/verify", {"passCode": "000000"})
    check(status == 403 and models.Error.from_dict(answer).error_code == "E0000068", "a wrong code is 403 E0000068")

    # Get and list factors.
    got, _, err = await client.get_factor(uid, fid)
    check(err is None and got.id == fid and got.status == models.UserFactorStatus.ACTIVE, f"get_factor: {err}")
    listed, _, err = await client.list_factors(uid)
    check(err is None and [f.id for f in listed] == [fid], f"list_factors: {err}")

    # Okta errors deserialize.
    _, _, err = await client.get_factor(uid, "uftNOTAFACTOR0000000")
    check(err is not None and getattr(err, "error_code", None) == "E0000007", f"an unknown factor is E0000007 ({err})")
    _, _, err = await client.get_user("nobody.at.all@example.com")
    check(err is not None and getattr(err, "error_code", None) == "E0000007", "an unknown user is E0000007")

    # Unenroll.
    _, resp, err = await client.unenroll_factor(uid, fid)
    check(err is None, f"unenroll_factor: {err}")
    listed, _, err = await client.list_factors(uid)
    check(err is None and listed == [], "no factors left")

    kinds = {f.factor_type for f in supported}
    if REQUIRE_OOB:
        check(models.UserFactorType.SMS in kinds and models.UserFactorType.PUSH in kinds,
              "the catalog offers sms and push (this gateway enables them)")
    if models.UserFactorType.SMS in kinds:
        await check_sms(client, uid)
    else:
        print("skipped: sms is not enabled on this gateway")
    if models.UserFactorType.PUSH in kinds:
        await check_push(client, uid)
    else:
        print("skipped: push is not enabled on this gateway")

    print("all SDK checks passed")


if __name__ == "__main__":
    asyncio.run(main())
