"""``GET /openapi.json``: the HTTP API described in OpenAPI 3.0 — ingest, health,
metrics, the status page and the admin API (the reference for its requests and
answers). A test runs schemathesis against a live ``router serve`` with it: every
answer must be one this document lists, in the shape it gives."""

from typing import Any, get_args

from aiohttp import web

from router import __version__
from router.store.base import DeliveryState

__all__ = ["openapi", "openapi_json"]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


_NULLABLE_NUMBER = {"type": "number", "nullable": True}
_DELIVERY = {
    "type": "object",
    "required": ["id", "key", "event_id", "rule", "channel", "state", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "key": {"type": "string", "description": "the idempotency key (webhook-id)"},
        "event_id": {"type": "string"},
        "event_name": {"type": "string", "nullable": True},
        "rule": {"type": "string"},
        "channel": {"type": "string"},
        "state": {
            "type": "string",
            "enum": list(get_args(DeliveryState)),
        },
        "attempts": {"type": "integer"},
        "created_at": _NULLABLE_NUMBER,
        "updated_at": _NULLABLE_NUMBER,
        "next_attempt_at": _NULLABLE_NUMBER,
        "last_error": {"type": "string", "nullable": True},
    },
}
_FILTERS = [
    {"name": "channel", "in": "query", "schema": {"type": "string"}},
    {"name": "rule", "in": "query", "schema": {"type": "string"}},
    {
        "name": "since",
        "in": "query",
        "description": "1h / 30m / 2d ago, unix seconds, or an ISO 8601 time",
        "schema": {"type": "string"},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]
_SELECTOR = {
    "type": "object",
    "description": 'which dead letters: {"ids": [...]}, {"all": true} or filters',
    "properties": {
        "ids": {"type": "array", "items": {"type": "integer"}},
        "all": {"type": "boolean"},
        "channel": {"type": "string"},
        "rule": {"type": "string"},
        "since": {"type": "string"},
    },
}
_ADMIN = [{"bearer": []}, {"session": []}]
_SILENCE = {
    "type": "object",
    "required": ["id", "state", "matchers", "starts_at", "ends_at"],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["active", "pending", "expired"]},
        "matchers": {"type": "object"},
        "matches": {"type": "string"},
        "starts_at": {"type": "string", "description": "ISO 8601, UTC"},
        "ends_at": {"type": "string"},
        "author": {"type": "string", "nullable": True},
        "comment": {"type": "string", "nullable": True},
        "created_at": {"type": "string"},
    },
}
_NEW_SILENCE = {
    "type": "object",
    "description": "matchers (rule, channel, event, match), for or ends_at, starts_at,"
    " author, comment",
    "properties": {
        "rule": {"type": "string"},
        "channel": {"type": "string"},
        "event": {"type": "string"},
        "match": {"type": "object"},
        "for": {"type": "string", "example": "2h"},
        "starts_at": {"type": "string"},
        "ends_at": {"type": "string"},
        "author": {"type": "string"},
        "comment": {"type": "string"},
    },
}
_UNAUTHORIZED = _error("missing or wrong admin token")
_EVENT = {
    "type": "object",
    "required": ["metadata"],
    "description": "a Canvas Live Event; unknown fields are kept",
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["event_name"],
            "properties": {"event_name": {"type": "string", "minLength": 1, "maxLength": 255}},
        },
        "body": {"type": "object", "nullable": True},
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document of the router's HTTP API."""
    accepted = {
        "type": "object",
        "required": ["accepted"],
        "properties": {
            "accepted": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "duplicate"],
                    "properties": {"id": {"type": "string"}, "duplicate": {"type": "boolean"}},
                },
            }
        },
    }
    invalid = {
        "type": "object",
        "required": ["error", "errors"],
        "properties": {
            "error": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "field", "message"],
                    "properties": {
                        "index": {"type": "integer"},
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
    events: dict[str, Any] = {
        "summary": "Accept events; 202 only once they are durable",
        "security": [{}, {"ingest": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [_EVENT, {"type": "array", "items": _EVENT}]}
                },
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/jwt": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "202": _json(accepted, "stored; a repeat is marked duplicate"),
            "400": _error("malformed JSON (with its position) or body encoding"),
            "401": _error("missing or wrong bearer token, or a bad signature"),
            "408": _error("the body did not arrive within ROUTER_READ_TIMEOUT"),
            "413": _error("body or batch over the limit"),
            "415": _error("unsupported Content-Type or Content-Encoding"),
            "422": _json(invalid, "valid JSON that is not an event, by field"),
            "503": _error("draining, the store failed, or keys unavailable"),
        },
    }
    reload_status = {
        "type": "object",
        "required": ["ok", "errors"],
        "properties": {
            "ok": {"type": "boolean"},
            "at": _NULLABLE_NUMBER,
            "trigger": {"type": "string", "nullable": True},
            "errors": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    }
    html = {"text/html": {"schema": {"type": "string"}}}
    redirect = {"description": "back to the status page (an HTML form was posted)"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "router",
            "version": __version__,
            "description": "Canvas Live Events in, notifications out. The admin API (/-/...)"
            " exists only when ROUTER_ADMIN_TOKEN is set.",
        },
        "paths": {
            "/events": {"post": events},
            "/events/{token}": {
                "post": {
                    **events,
                    "summary": "POST /events for senders that cannot set a header: the"
                    " ingest token in the path (only when ROUTER_INGEST_TOKEN is set)",
                    "security": [{}],
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        **events["responses"],
                        "401": _error("wrong token in the path"),
                        "404": _error("no ingest token is configured"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is alive",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"status": {"type": "string"}}},
                            "alive",
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Ready: store readable and writable, rules loaded, not draining",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["state"],
                                "properties": {
                                    "state": {"type": "string", "enum": ["ready"]},
                                    "rules": {"type": "string"},
                                    "rules_reload": reload_status,
                                    "events_pending": {"type": "integer"},
                                    "deliveries_pending": {"type": "integer"},
                                    "dead_letters": {"type": "integer"},
                                },
                            },
                            "ready",
                        ),
                        "503": _error("draining, or the store cannot be read or written"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "the text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")},
                }
            },
            "/": {
                "get": {
                    "summary": "The status page (admin token once as ?token=, then a cookie)",
                    "parameters": [{"name": "token", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the page", "content": html},
                        "303": {"description": "token traded for a session cookie"},
                        "401": {"description": "the login page", "content": html},
                    },
                }
            },
            "/-/reload": {
                "post": {
                    "summary": "Reload the rules file and templates now",
                    "security": _ADMIN,
                    "responses": {
                        "200": _json(reload_status, "reloaded"),
                        "401": _UNAUTHORIZED,
                        "422": _json(reload_status, "the files are bad; the old rules stay"),
                    },
                }
            },
            "/-/deliveries": {
                "get": {
                    "summary": "Deliveries, newest first",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": _DELIVERY["properties"]["state"],  # type: ignore[index]
                        },
                        *_FILTERS,
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["deliveries"],
                                "properties": {"deliveries": {"type": "array", "items": _DELIVERY}},
                            },
                            "the deliveries",
                        ),
                        "400": _error("a malformed query parameter"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/-/dlq": {
                "get": {
                    "summary": "Dead letters with their errors and attempts",
                    "security": _ADMIN,
                    "parameters": _FILTERS,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["total", "dead_letters"],
                                "properties": {
                                    "total": {"type": "integer"},
                                    "dead_letters": {"type": "array", "items": _DELIVERY},
                                },
                            },
                            "the dead letters",
                        ),
                        "400": _error("a malformed query parameter"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/-/dlq/{id}": {
                "get": {
                    "summary": "One dead letter with its message and event (credentials masked)",
                    "security": _ADMIN,
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["delivery", "message", "event"],
                                "properties": {
                                    "delivery": _DELIVERY,
                                    "message": {"nullable": True},
                                    "event": {"nullable": True},
                                },
                            },
                            "the dead letter",
                        ),
                        "400": _error("the id is not a number"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such dead letter"),
                    },
                }
            },
            "/-/dlq/replay": {
                "post": {
                    "summary": "Requeue dead letters (same idempotency keys)",
                    "security": _ADMIN,
                    "requestBody": {"content": {"application/json": {"schema": _SELECTOR}}},
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"replayed": {"type": "integer"}}},
                            "how many were requeued",
                        ),
                        "303": redirect,
                        "400": _error("no selector, or a malformed one"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/-/dlq/purge": {
                "post": {
                    "summary": "Delete dead letters",
                    "security": _ADMIN,
                    "requestBody": {"content": {"application/json": {"schema": _SELECTOR}}},
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"purged": {"type": "integer"}}},
                            "how many were deleted",
                        ),
                        "303": redirect,
                        "400": _error("no selector, or a malformed one"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/-/silences": {
                "get": {
                    "summary": "Active silences (?all=1: every silence), newest first",
                    "security": _ADMIN,
                    "parameters": [{"name": "all", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["silences"],
                                "properties": {"silences": {"type": "array", "items": _SILENCE}},
                            },
                            "the silences",
                        ),
                        "401": _UNAUTHORIZED,
                    },
                },
                "post": {
                    "summary": "Silence the deliveries a set of matchers selects, for a while",
                    "security": _ADMIN,
                    "requestBody": {"content": {"application/json": {"schema": _NEW_SILENCE}}},
                    "responses": {
                        "201": _json(_SILENCE, "the new silence"),
                        "303": redirect,
                        "400": _error("no matcher, no end, or a malformed field"),
                        "401": _UNAUTHORIZED,
                    },
                },
            },
            "/-/silences/{id}/expire": {
                "post": {
                    "summary": "End a silence now",
                    "security": _ADMIN,
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json(_SILENCE, "the silence, ended"),
                        "303": redirect,
                        "400": _error("a malformed body"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such silence"),
                    },
                }
            },
        },
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "admin token"},
                "ingest": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ROUTER_INGEST_TOKEN, when set",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "router_admin"},
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(openapi())
