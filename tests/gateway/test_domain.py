from services.gateway.domain import TokenCache, bearer_token, owner_of, revoked_agent_key
from shared.http.identity import Identity


def test_routes_go_to_their_owner():
    assert owner_of("/api/v1/auth/login") == "auth"
    assert owner_of("/api/v1/agent-keys/abc") == "auth"
    assert owner_of("/api/v1/backups") == "backup"
    assert owner_of("/api/v1/hosts/x") == "backup"
    assert owner_of("/api/v1/repository/objects") == "backup"
    assert owner_of("/api/v1/objects/b/k") == "backup"
    assert owner_of("/api/v1/recoveries/r/image") == "recovery"
    assert owner_of("/api/v1/instances/i/start") == "instances"
    assert owner_of("/api/v1/internal") is None
    assert owner_of("/internal/introspect") is None


def test_bearer_parsing():
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") == ""
    assert bearer_token("Bearer") == ""


def test_cache_honours_ttl_token_expiry_and_forgetting():
    now = [0.0]
    cache = TokenCache(ttl=5, max_entries=2, clock=lambda: now[0])
    who = Identity(kind="user", user_id="u")
    cache.put("t1", who)
    cache.put("t2", who, not_after=1.0)
    assert cache.get("t1") == who and cache.get("t2") == who
    now[0] = 1.5
    assert cache.get("t2") is None  # the token itself expired
    now[0] = 5.0
    assert cache.get("t1") is None  # the cache bound
    cache.put("a", who), cache.put("b", who), cache.put("c", who)
    assert cache.get("a") is None and cache.get("c") == who  # bounded size
    cache.forget("c")
    assert cache.get("c") is None


def test_cache_forgets_by_token_id_and_keeps_its_index_bounded():
    now = [0.0]
    cache = TokenCache(ttl=5, max_entries=2, clock=lambda: now[0])
    cache.put("t1", Identity(kind="agent", user_id="u", token_id="k1"))
    cache.put("t2", Identity(kind="agent", user_id="u", token_id="k2"))
    cache.forget_token_id("k1")
    cache.forget_token_id("unknown")
    assert cache.get("t1") is None and cache.get("t2") is not None
    # Evicted and expired entries leave the index too.
    cache.put("t3", Identity(kind="user", user_id="u", token_id="k3"))
    cache.put("t4", Identity(kind="user", user_id="u", token_id="k4"))
    assert len(cache) == 2 and set(cache._by_token_id) == {"k3", "k4"}
    now[0] = 6
    assert cache.get("t3") is None and set(cache._by_token_id) == {"k4"}


def test_a_check_that_began_before_a_forget_is_not_cached():
    cache = TokenCache(ttl=5)
    who = Identity(kind="user", user_id="u", token_id="k1")
    ticket = cache.ticket()
    cache.forget_token_id("k1")  # a revocation while the check was in flight
    cache.put("t1", who, ticket=ticket)
    assert cache.get("t1") is None
    cache.put("t1", who, ticket=cache.ticket())
    assert cache.get("t1") == who


def test_revoked_agent_key_paths():
    assert revoked_agent_key("/api/v1/agent-keys/abc") == "abc"
    assert revoked_agent_key("/api/v1/agent-keys/") is None
    assert revoked_agent_key("/api/v1/agent-keys") is None
    assert revoked_agent_key("/api/v1/agent-keys/abc/x") is None
    assert revoked_agent_key("/api/v1/backups/abc") is None


def test_large_bodies_only_for_objects_and_commits():
    from services.gateway.domain import body_limit

    assert body_limit("/api/v1/objects/b/k", 10, 99) == 99
    assert body_limit("/api/v1/backups/abc/commit", 10, 99) == 99
    assert body_limit("/api/v1/backups/abc/upload-urls", 10, 99) == 10
    assert body_limit("/api/v1/auth/register", 10, 99) == 10
    assert body_limit("/elsewhere", 10, 99) == 10
