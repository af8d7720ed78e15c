"""Schemathesis hooks for `./dev fuzz`: real ids, a real bearer token and real cursors.

The fuzzer generates requests from each API's /openapi.json. Left alone, it would only ever
write to random user ids (every write 403) and read random ones (every read 404), and never
get past the parts of the API that look at something the schema cannot describe. So, for the
parts of a request that are *valid* (as the document describes them), this puts in values
that the API issued:

- the bearer token of a user signed up through the command API (an auth provider, so that
  schemathesis's `ignored_auth` check can still take it away and expect a 401);
- path ids: that user's id, one of its posts, one of its commands, so that writes reach the
  field rules and the broker, and reads reach real rows;
- `Consistency-Token`: a token the command API issued. A well-formed token of a write that
  never happened makes the query API wait for it and answer 503 after its bounded wait, as
  the contract says; that is the API working, not a finding, and it would cost seconds a case;
- `cursor`: one the API issued. A cursor is opaque and valid only if the API made it (any other
  is a 400, as the contract says), which no schema can describe.

What is *invalid* is never touched: the API must refuse it with a 4xx, and the checks hold it
to that. (This looks at each value rather than at the case's generation mode: a case the
fuzzer made invalid through one header still sends its other, valid, values.)

Every case is then judged again against the document as it is sent (its components marked
for revalidation): schemathesis's coverage phase builds some cases that it calls valid while
they carry an invalid value (an empty `If-Match` or `Consistency-Token`, which the patterns do
not allow), and would then report the API's 400 as "valid data rejected".

Settings, from the environment (`./dev fuzz` sets them):
  FUZZ_COMMAND_URL   the command API's base URL, where the fixtures' user signs up
  FUZZ_QUERY_URL     the query API's base URL, to wait until the fixtures are readable
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.request
import uuid

import schemathesis
from schemathesis.core.parameters import ParameterLocation

COMMAND_URL = os.environ["FUZZ_COMMAND_URL"].rstrip("/")
QUERY_URL = os.environ["FUZZ_QUERY_URL"].rstrip("/")
# The query API's patterns for these (query-api/src/openapi.rs): what matches them parses.
CONSISTENCY_TOKEN = re.compile(r"^v1\.[0-9]{1,5}\.[0-9]{1,18}$")
POST_CURSOR = re.compile(r"^[A-Za-z0-9_-]{34}$")
STREAM_CURSOR = re.compile(r"^[A-Za-z0-9_-]{12}$")
# Every wait here is bounded: the fixtures need a few writes to be decided.
TIMEOUT_SECS = 30


def call(method: str, url: str, body: object = None, headers: dict[str, str] | None = None):
    """One request; returns (status, headers, JSON body or None). Raises on a 5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECS) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, raw = error.code, error.headers, error.read()
    if status >= 500:
        raise RuntimeError(f"fixtures: {method} {url} answered {status}: {raw[:500]!r}")
    return status, answer_headers, (json.loads(raw) if raw else None)


def write(method: str, path: str, body: object = None, token: str | None = None) -> dict:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, _, answer = call(method, COMMAND_URL + path, body, headers)
    if status != 202:
        raise RuntimeError(f"fixtures: {method} {path} answered {status}: {answer}")
    return answer


def read(path: str, consistency_token: str) -> dict:
    """A read once the read model has the write behind `consistency_token`."""
    status, _, answer = call("GET", QUERY_URL + path, headers={"consistency-token": consistency_token})
    if status != 200:
        raise RuntimeError(f"fixtures: GET {path} answered {status}: {answer}")
    return answer


@functools.cache
def fixtures() -> dict:
    """A user with a profile edit and two posts, all decided: the ids, token and cursors that
    the requests get. Made once per fuzz run of an API, lazily: the first request needs them."""
    signed_up = write("POST", "/v1/users", {"display_name": "fuzz", "bio": "made by ./dev fuzz"})
    user_id, token = signed_up["aggregate_id"], signed_up["access_token"]
    write("PATCH", f"/v1/users/{user_id}", {"bio": "edited"}, token)
    post_ids = []
    last = None
    for n in (1, 2):
        last = write("POST", f"/v1/users/{user_id}/posts", {"title": f"post {n}", "body": "text"}, token)
        post_ids.append(last["aggregate_id"])
    consistency_token = last["consistency_token"]
    read(f"/v1/commands/{last['command_id']}", consistency_token)
    feed = read("/v1/posts?limit=1", consistency_token)
    stream = read(f"/v1/streams/{user_id}/events?limit=1", consistency_token)
    if not feed["next_cursor"] or not stream["next_cursor"]:
        raise RuntimeError(f"fixtures: expected a second page: {feed}, {stream}")
    return {
        "user_id": user_id,
        "token": token,
        "post_id": post_ids[0],
        "command_id": last["command_id"],
        "consistency_token": consistency_token,
        "post_cursor": feed["next_cursor"],
        "stream_cursor": stream["next_cursor"],
    }


def needs_token(operation) -> bool:
    return bool(operation.definition.raw.get("security"))


@schemathesis.auth(refresh_interval=None)
class BearerToken:
    """The fixtures' user's token on the writes that need one."""

    def get(self, case, context):
        return fixtures()["token"]

    def set(self, case, data, context):
        if needs_token(case.operation):
            case.headers = case.headers or {}
            case.headers["Authorization"] = f"Bearer {data}"


def is_uuid(value: object) -> bool:
    """Whether the API takes `value` as a path id (the hyphenated form only)."""
    try:
        return isinstance(value, str) and len(value) == 36 and bool(uuid.UUID(value))
    except ValueError:
        return False


@schemathesis.hook
def before_call(context, case, kwargs):
    """Puts real values in place of valid generated ones, wherever they are: a case made
    invalid by one of its parts (negative) keeps that part, and gets real values for the rest."""
    if os.environ.get("FUZZ_DEBUG"):
        print("CASE", case.method, case.path, case.path_parameters, case.headers, case.query,
              case.meta and {k.name: v.mode.value for k, v in case.meta.components.items()},
              case.meta and case.meta.phase.data, flush=True)
    real = fixtures()
    for name, value in (case.path_parameters or {}).items():
        if not is_uuid(value):
            continue
        if name in ("user_id", "aggregate_id"):
            case.path_parameters[name] = real["user_id"]
        elif name == "post_id":
            case.path_parameters[name] = real["post_id"]
        elif name == "command_id":
            case.path_parameters[name] = real["command_id"]
    for name, value in (case.headers or {}).items():
        if name.lower() == "consistency-token" and CONSISTENCY_TOKEN.match(str(value)):
            case.headers[name] = real["consistency_token"]
    if case.query and isinstance(case.query.get("cursor"), str):
        is_stream = case.operation.path.startswith("/v1/streams/")
        pattern = STREAM_CURSOR if is_stream else POST_CURSOR
        if pattern.match(case.query["cursor"]):
            case.query["cursor"] = real["stream_cursor" if is_stream else "post_cursor"]
    if case.meta is not None:
        for location in case.meta.components:
            case.meta.mark_dirty(location)

