#!/usr/bin/env python3
"""The official Okta Python SDK (PyPI `okta`, 3.x) against a running Portcullis.

Usage: PORTCULLIS_ADMIN_URL=http://127.0.0.1:9090 PORTCULLIS_ADMIN_TOKEN=... \
       OKTA_TESTING_TESTINGDISABLEHTTPSCHECK=true python3 tests/okta/sdk_check.py

Through the SDK's own methods: create a user, list users (paging with the
Link header), get the user, list the supported factors (catalog), enroll a
TOTP factor, get and list factors, unenroll, and read an Okta error. The SDK
3.x typed activate and verify request models carry no passCode, so those two
go over plain HTTP, and their answers are parsed with the SDK's own models.
The TOTP codes are computed here (pyotp, else oathtool), never by the
gateway. Every answer must deserialize without error. Exits non-zero on the
first failure; never prints a token, a secret or a code.
"""

import asyncio
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


def http(method, path, body=None):
    """A plain request with the admin token: (status, headers, JSON or None)."""
    req = urllib.request.Request(ADMIN + path, method=method, headers={
        "Authorization": f"SSWS {TOKEN}", "Accept": "application/json", "Content-Type": "application/json",
    }, data=None if body is None else json.dumps(body).encode())
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

    # SMS (when enabled): a resend right away is 429 E0000109 with Date and X-Rate-Limit-Reset.
    if any(f.factor_type == models.UserFactorType.SMS for f in supported):
        status, _, answer = http("POST", f"/api/v1/users/{uid}/factors",
                                 {"factorType": "sms", "provider": "OKTA", "profile": {"phoneNumber": "+15555550100"}})
        check(status == 200, f"sms enroll answers 200 (got {status}: {answer})")
        sms = models.UserFactor.from_dict(answer)
        status, headers, answer = http("POST", f"/api/v1/users/{uid}/factors/{sms.id}/resend")
        check(status == 429 and answer["errorCode"] == "E0000109", f"an immediate resend is 429 E0000109 (got {status})")
        check("Date" in headers and "X-Rate-Limit-Reset" in headers, "the 429 carries Date and X-Rate-Limit-Reset")
        models.Error.from_dict(answer)
    else:
        print("skipped: sms is not enabled on this gateway")

    print("all SDK checks passed")


if __name__ == "__main__":
    asyncio.run(main())
