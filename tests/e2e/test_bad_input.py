"""Bad input gets a clear 4xx problem+json and never a 500 or a traceback."""

import aiohttp
import pytest

from shared.settings import AuthSettings
from tests.harness import FAST_ARGON2, Api, running_stack, settings_for

PROBLEM = "application/problem+json"


def assert_problem(result, status):
    code, body, kind = result
    assert code == status, body
    assert kind.startswith(PROBLEM), kind
    assert body["status"] == status and body["title"]
    assert "Traceback" not in str(body)
    return body


async def test_malformed_json_missing_fields_wrong_shapes(api):
    register = "/api/v1/auth/register"
    assert_problem(await api.call("POST", register, data=b"{not json"), 400)
    assert_problem(await api.call("POST", register, data=b""), 400)
    assert_problem(await api.call("POST", register, data=b"\xff\xfe\x00"), 400)
    body = assert_problem(await api.call("POST", register, json={"username": "zed"}), 422)
    assert body["errors"] == [{"location": ["body", "password"], "message": "Field required",
                               "type": "missing"}]
    assert_problem(await api.call("POST", register, json=[1, 2]), 422)
    assert_problem(await api.call("POST", register, json={"username": 5, "password": None}), 422)


async def test_oversized_body_is_413(api):
    big = b'{"username": "' + b"x" * (2 * 1024 * 1024) + b'", "password": "y"}'
    assert_problem(await api.call("POST", "/api/v1/auth/register", data=big), 413)


async def test_unknown_routes_and_methods(api):
    assert_problem(await api.call("GET", "/api/v1/nothing-here"), 404)
    assert_problem(await api.call("GET", "/not-the-api"), 404)
    assert_problem(await api.call("PUT", "/api/v1/auth/login"), 405)
    assert_problem(await api.call("GET", "/api/v1/auth/no-such-thing"), 404)


@pytest.mark.parametrize("username", ["", "ab", "x" * 10_000, "a b", "tab\there",
                                      "new\nline", "semi;colon", "<script>"])
async def test_bad_usernames_are_refused(api, username):
    body = assert_problem(await api.call("POST", "/api/v1/auth/register",
                                         json={"username": username, "password": "long enough"}),
                          422)
    assert body["errors"][0]["location"] == ["body", "username"]


@pytest.mark.parametrize("password", ["", "short", "p" * 10_000])
async def test_bad_passwords_are_refused(api, password):
    body = assert_problem(await api.call("POST", "/api/v1/auth/register",
                                         json={"username": "valid-name", "password": password}),
                          422)
    assert body["errors"][0]["location"] == ["body", "password"]


async def test_unicode_usernames_and_passwords_work(api):
    # Composed on registration, decomposed at login: one account.
    composed, decomposed = "Zoë_Ωμέγα", "Zoe\u0308_Ωμέγα"
    password = "пароль-секрет 🔑 " + "ü"
    status, user, _ = await api.call("POST", "/api/v1/auth/register",
                                     json={"username": composed, "password": password})
    assert status == 201 and user["username"] == composed
    status, session, _ = await api.call(
        "POST", "/api/v1/auth/login",
        json={"username": decomposed, "password": "пароль-секрет 🔑 " + "u\u0308"})
    assert status == 200 and session["user"]["id"] == user["id"]
    # The longest allowed password and username are accepted.
    status, _, _ = await api.call("POST", "/api/v1/auth/register",
                                  json={"username": "u" * 64, "password": "p" * 1024})
    assert status == 201


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ",
                                    "Bearer rcs_forged", "Bearer " + "A" * 5000,
                                    "bearer rca_" + "b" * 43])
async def test_bad_credentials_are_401(api, header):
    assert_problem(await api.call("GET", "/api/v1/auth/me", headers={"Authorization": header}),
                   401)


async def test_user_only_routes_need_a_token(api):
    assert_problem(await api.call("GET", "/api/v1/auth/me"), 401)
    assert_problem(await api.call("GET", "/api/v1/agent-keys"), 401)
    assert_problem(await api.call("POST", "/api/v1/auth/logout"), 401)


async def test_bad_agent_key_requests(api):
    await api.register_and_login("keeper")
    assert_problem(await api.call("POST", "/api/v1/agent-keys", json={"host": ""}), 422)
    assert_problem(await api.call("POST", "/api/v1/agent-keys", json={"host": "h" * 300}), 422)
    assert_problem(await api.call("POST", "/api/v1/agent-keys", json={"host": "bad\x00host"}),
                   422)
    assert_problem(await api.call("GET", "/api/v1/agent-keys?limit=0"), 422)
    assert_problem(await api.call("GET", "/api/v1/agent-keys?limit=many"), 422)
    assert_problem(await api.call("DELETE", "/api/v1/agent-keys/" + "z" * 500), 404)


async def test_login_is_throttled_per_username_and_per_address(mode, tmp_path, unique):
    auth = AuthSettings(login_failures_per_username=3, login_failures_per_address=5,
                        **FAST_ARGON2)
    settings = settings_for(mode, tmp_path, unique, auth=auth)
    async with running_stack(settings) as (_, base), aiohttp.ClientSession() as http:
        api = Api(http, base)
        await api.register_and_login("target", "the right password")
        wrong = {"username": "target", "password": "a wrong password"}
        for _ in range(3):
            assert (await api.call("POST", "/api/v1/auth/login", json=wrong))[0] == 401
        status, body, _ = await api.call("POST", "/api/v1/auth/login",
                                         json={"username": "target",
                                               "password": "the right password"})
        assert status == 429 and body["title"] == "Too many attempts"
        # Another account from the same address still gets tries, until the address limit.
        other = {"username": "someone-else", "password": "whatever it is"}
        assert (await api.call("POST", "/api/v1/auth/login", json=other))[0] == 401
        assert (await api.call("POST", "/api/v1/auth/login", json=other))[0] == 401
        async with http.post(base + "/api/v1/auth/login", json=other) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) > 0
