"""Auth's HTTP routes: thin, the rules are in domain.py (and, for notifications, in the
notifications package)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.auth import domain
from services.auth.notifications import destinations
from services.auth.notifications import store as notification_store
from services.auth.tables import NotificationDeliveryRow, TokenRow, UserRow
from shared.api.auth import (
    AgentKey,
    AgentKeyCreated,
    AgentKeyRequest,
    Introspection,
    IntrospectRequest,
    LoginRequest,
    Me,
    RegisterRequest,
    Session,
    User,
)
from shared.api.common import Page, PageQuery
from shared.api.notifications import (
    DeliveriesQuery,
    Delivery,
    NotificationSettings,
    NotificationSettingsRequest,
    NotificationSettingsSaved,
)
from shared.events import TokenEnded, utcnow
from shared.http.problems import Problem, conflict, not_found, unauthorized
from shared.http.routes import ANYONE, SERVICE, USER, USER_OR_AGENT, Call, Routes
from shared.pagination import paginate

routes = Routes("auth")

WRONG_CREDENTIALS = "the username or the password is wrong"


def _user(row: UserRow) -> User:
    return User(id=row.id, username=row.username, created_at=row.created_at)


def _agent_key(row: TokenRow) -> AgentKey:
    return AgentKey(id=row.id, host=row.host or "", created_at=row.created_at,
                    revoked_at=row.deactivated_at)


def _username(raw: str) -> tuple[str, str]:
    try:
        return domain.normalize_username(raw)
    except domain.InvalidUsername as exc:
        raise Problem(422, "Invalid request", str(exc),
                      errors=[{"location": ["body", "username"], "message": str(exc),
                               "type": "value_error"}]) from None


@routes.post("/api/v1/auth/register", allow=ANYONE, body=RegisterRequest, response=User,
             status=201, errors=(409,))
async def register(call: Call) -> User:
    """Create an account."""
    auth = call.service
    username, key = _username(call.body.username)
    password_hash = await auth.hash_password(domain.normalize_password(call.body.password))
    now = utcnow()
    row = UserRow(id=domain.new_id(), username=username, username_key=key,
                  password_hash=password_hash, active=True, created_at=now, updated_at=now)
    try:
        async with auth.db.transaction() as session:
            session.add(row)
    except IntegrityError:
        raise conflict("that username is taken") from None
    return _user(row)


@routes.post("/api/v1/auth/login", allow=ANYONE, body=LoginRequest, response=Session,
             errors=(401, 429))
async def login(call: Call) -> Session:
    """Exchange a username and password for a session token."""
    auth = call.service
    address = call.identity.client_ip
    try:
        _, key = domain.normalize_username(call.body.username)
    except domain.InvalidUsername:
        key = call.body.username.casefold()
    wait = auth.throttle.retry_after(key, address)
    if wait:
        raise Problem(429, "Too many attempts", f"try again in {wait} seconds",
                      headers={"Retry-After": str(wait)})
    async with auth.db.sessions() as session:
        user = await session.scalar(select(UserRow).where(UserRow.username_key == key))
    ok = await auth.verify_password(user.password_hash if user else None,
                                    domain.normalize_password(call.body.password))
    if not ok or user is None or not user.active:
        auth.throttle.failed(key, address)
        raise unauthorized(WRONG_CREDENTIALS)
    auth.throttle.succeeded(key)
    token = domain.new_token("session")
    now = utcnow()
    expires = domain.session_expiry(now, auth.settings.session_ttl_seconds)
    async with auth.db.transaction() as session:
        session.add(TokenRow(id=domain.new_id(), user_id=user.id,
                             token_hash=domain.token_hash(token), kind="session",
                             active=True, created_at=now, expires_at=expires))
    return Session(token=token, expires_at=expires, user=_user(user))


@routes.post("/api/v1/auth/logout", allow=USER, status=204)
async def logout(call: Call) -> None:
    """End this session: its token stops working at once."""
    await _deactivate(call.service, call.identity.token_id, call.user_id, "logout")


@routes.get("/api/v1/auth/me", allow=USER_OR_AGENT, response=Me)
async def me(call: Call) -> Me:
    """Who this token belongs to."""
    who = call.identity
    return Me(id=call.user_id, username=who.username or "", kind=who.kind, host=who.host)


@routes.post("/api/v1/agent-keys", allow=USER, body=AgentKeyRequest, response=AgentKeyCreated,
             status=201)
async def mint_agent_key(call: Call) -> AgentKeyCreated:
    """Mint a key for the Backup Manager of one host; the key is shown only now."""
    auth = call.service
    host = call.body.host.strip()
    if not host or not host.isprintable():
        raise Problem(422, "Invalid request", "the host name must be printable text")
    token = domain.new_token("agent")
    row = TokenRow(id=domain.new_id(), user_id=call.user_id, token_hash=domain.token_hash(token),
                   kind="agent", host=host, active=True, created_at=utcnow(), expires_at=None)
    async with auth.db.transaction() as session:
        session.add(row)
    return AgentKeyCreated(key=token, **_agent_key(row).model_dump())


@routes.get("/api/v1/agent-keys", allow=USER, query=PageQuery, response=Page[AgentKey])
async def list_agent_keys(call: Call) -> Page[AgentKey]:
    """The caller's agent keys, revoked ones included."""
    async with call.service.db.sessions() as session:
        rows, cursor = await paginate(
            session,
            select(TokenRow).where(TokenRow.user_id == call.user_id, TokenRow.kind == "agent"),
            TokenRow.created_at, TokenRow.id, limit=call.query.limit, cursor=call.query.cursor,
        )
    return Page[AgentKey](items=[_agent_key(r) for r in rows], next_cursor=cursor)


@routes.delete("/api/v1/agent-keys/{key_id}", allow=USER, status=204, errors=(404,))
async def revoke_agent_key(call: Call) -> None:
    """Revoke an agent key: the agent using it is refused from then on."""
    if not await _deactivate(call.service, call.param("key_id"), call.user_id, "revoked",
                             kind="agent"):
        raise not_found("no such agent key")


@routes.post("/internal/introspect", allow=SERVICE, body=IntrospectRequest,
             response=Introspection)
async def introspect(call: Call) -> Introspection:
    """For the gateway: who a bearer token belongs to, if it is valid now."""
    token = call.body.token
    if not domain.looks_like_token(token):
        raise unauthorized("not a ReClo token")
    async with call.service.db.sessions() as session:
        found = (await session.execute(
            select(TokenRow, UserRow).join(UserRow, UserRow.id == TokenRow.user_id)
            .where(TokenRow.token_hash == domain.token_hash(token))
        )).first()
    if found is None:
        raise unauthorized("unknown token")
    row, user = found
    if not row.active:
        raise unauthorized(f"the token was {row.deactivated_reason or 'deactivated'}")
    if domain.is_expired(row.expires_at, utcnow()):
        raise unauthorized("the token expired")
    if not user.active:
        raise unauthorized("the account is disabled")
    return Introspection(kind="user" if row.kind == "session" else "agent", user_id=user.id,
                         username=user.username, token_id=row.id, host=row.host,
                         expires_at=row.expires_at)


async def _deactivate(auth, token_id: str | None, user_id: str, reason: str,
                      kind: str | None = None) -> bool:
    if token_id is None:
        return False
    query = (update(TokenRow)
             .where(TokenRow.id == token_id, TokenRow.user_id == user_id,
                    TokenRow.active.is_(True))
             .values(active=False, deactivated_at=utcnow(), deactivated_reason=reason))
    if kind is not None:
        query = query.where(TokenRow.kind == kind)
    async with auth.db.transaction() as session:
        result = await session.execute(query)
        ended = result.rowcount == 1
        if ended:  # gateways drop it from their caches (docs/auth.md)
            await auth.outbox.add(session, TokenEnded(token_id=token_id, user_id=user_id,
                                                      reason=reason))
    return ended



# ---------------------------------------------------------------------------------------
# notifications (docs/notifications.md)
# ---------------------------------------------------------------------------------------

notification_routes = Routes("notifications")


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, "Invalid request", message,
                   errors=[{"location": ["body", field], "message": message,
                            "type": "value_error"}])


def _delivery(row: NotificationDeliveryRow) -> Delivery:
    return Delivery(id=row.id, event_id=row.event_id, event_type=row.event_type,
                    channel=row.channel, target=row.target, state=row.state,
                    attempts=row.attempts, last_error=row.last_error,
                    created_at=row.created_at, finished_at=row.finished_at,
                    next_attempt_at=row.next_attempt_at
                    if row.state in ("pending", "sending") else None)


@notification_routes.get("/api/v1/notifications/settings", allow=USER,
                         response=NotificationSettings)
async def get_notification_settings(call: Call) -> NotificationSettings:
    """Where and what the caller is told (the signing secret itself is never shown again)."""
    async with call.service.db.sessions() as session:
        row = await notification_store.load(session, call.user_id)
    return notification_store.view(row, utcnow())


@notification_routes.route("PUT", "/api/v1/notifications/settings", allow=USER,
                           body=NotificationSettingsRequest, response=NotificationSettingsSaved)
async def put_notification_settings(call: Call) -> NotificationSettingsSaved:
    """Replace the caller's notification settings; a new webhook's signing secret is in
    the answer, once."""
    auth = call.service
    body: NotificationSettingsRequest = call.body
    url = email = None
    try:
        if body.webhook_url is not None:
            url = destinations.webhook_url(
                body.webhook_url, allow_private=auth.settings.notify_allow_private_webhooks)
    except destinations.InvalidDestination as exc:
        raise _invalid("webhook_url", str(exc)) from None
    try:
        if body.email is not None:
            email = destinations.email_address(body.email)
    except destinations.InvalidDestination as exc:
        raise _invalid("email", str(exc)) from None
    if email is not None and not auth.sender.mailer.configured:
        raise _invalid("email", "this server sends no e-mail (it has no SMTP relay configured)")
    now = utcnow()
    async with auth.db.transaction() as session:
        row, secret = await notification_store.replace(
            session, call.user_id, webhook_url=url, email=email, events=body.events, now=now)
    view = notification_store.view(row, now)
    return NotificationSettingsSaved(**view.model_dump(), webhook_secret=secret)


@notification_routes.post("/api/v1/notifications/settings/rotate-secret", allow=USER,
                          response=NotificationSettingsSaved, errors=(409,))
async def rotate_webhook_secret(call: Call) -> NotificationSettingsSaved:
    """A new webhook signing secret, in the answer once; the old one keeps signing for the
    grace period (RECLO_AUTH__NOTIFY_SECRET_GRACE_SECONDS)."""
    auth = call.service
    now = utcnow()
    async with auth.db.transaction() as session:
        rotated = await notification_store.rotate(
            session, call.user_id, now=now, grace_seconds=auth.settings.notify_secret_grace_seconds)
    if rotated is None:
        raise conflict("no webhook is set, so there is no secret to rotate")
    row, secret = rotated
    view = notification_store.view(row, now)
    return NotificationSettingsSaved(**view.model_dump(), webhook_secret=secret)


@notification_routes.get("/api/v1/notifications/deliveries", allow=USER,
                         query=DeliveriesQuery, response=Page[Delivery])
async def list_deliveries(call: Call) -> Page[Delivery]:
    """The caller's notification deliveries, newest first (`state=` to filter)."""
    query: DeliveriesQuery = call.query
    statement = select(NotificationDeliveryRow).where(
        NotificationDeliveryRow.user_id == call.user_id)
    if query.state is not None:
        statement = statement.where(NotificationDeliveryRow.state == query.state)
    async with call.service.db.sessions() as session:
        rows, cursor = await paginate(session, statement, NotificationDeliveryRow.created_at,
                                      NotificationDeliveryRow.id, limit=query.limit,
                                      cursor=query.cursor, newest_first=True)
    return Page[Delivery](items=[_delivery(r) for r in rows], next_cursor=cursor)
