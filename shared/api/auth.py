"""Accounts, sessions and agent keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

# Generous bounds: long enough for passphrases, short enough that hashing stays cheap.
USERNAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
HOST_MAX = 255


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=USERNAME_MAX)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)


class RegisterRequest(Credentials):
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)


class LoginRequest(Credentials):
    pass


class User(BaseModel):
    id: str
    username: str
    created_at: datetime


class Session(BaseModel):
    token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_at: datetime
    user: User


class Me(BaseModel):
    id: str
    username: str
    kind: Literal["user", "agent"]
    host: str | None = None


class AgentKeyRequest(BaseModel):
    host: str = Field(min_length=1, max_length=HOST_MAX,
                      description="the name of the server this key backs up")


class AgentKey(BaseModel):
    id: str
    host: str
    created_at: datetime
    revoked_at: datetime | None = None


class AgentKeyCreated(AgentKey):
    key: str = Field(description="shown once: store it on the agent")


class IntrospectRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256)


class Introspection(BaseModel):
    kind: Literal["user", "agent"]
    user_id: str
    username: str
    token_id: str
    host: str | None = None
    expires_at: datetime | None = None
