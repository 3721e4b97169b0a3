#!/usr/bin/env python3
"""OPC-UA peer server for the gateway's integration tests (asyncua 1.1.8).

A small, deterministic OPC-UA server built on asyncua 1.1.8 (pinned: this
script hooks asyncua internals that change between releases).

Usage
-----
::

    opcua_server.py --port N --state FILE [--period 0.1]
                    [--secure --pki-dir DIR] [--users user:pass[,user:pass]]
                    [--user-cert FILE[,FILE]]... [--no-anonymous]
                    [--bench-items N] [--verbose]

* ``--port N``       listen on 127.0.0.1:N only; the endpoint URL is
                     ``opc.tcp://127.0.0.1:N/gateway-test/``.
* ``--state FILE``   JSON state file, rewritten atomically (tmp + rename)
                     whenever it changes (format below).
* ``--period S``     update period of the dynamic values (default 0.1 s).
* ``--secure``       besides None/None also offer Basic256Sha256 Sign and
                     SignAndEncrypt, Aes128_Sha256_RsaOaep SignAndEncrypt and
                     Aes256_Sha256_RsaPss SignAndEncrypt.  Needs --pki-dir.
                     Every client certificate is accepted (no trust list).
* ``--pki-dir DIR``  server certificate ``server_cert.der`` and key
                     ``server_key.pem`` are created there on first start and
                     reused later, so a restarted server keeps its certificate.
                     Application URI ``urn:gateway-rust:test-server``, SAN
                     IP 127.0.0.1 and DNS localhost.
* ``--users LIST``   username/password identities that are accepted.
* ``--user-cert FILE`` (repeatable, and/or comma-separated; needs --secure)
                     X.509 user certificates (DER or PEM) that are accepted
                     as user identity, see "X.509 user identity" below.
* ``--no-anonymous`` refuse anonymous logins (needs --users or --user-cert).
* ``--bench-items N`` (default 0: none) add N benchmark variables, see
                     "Benchmark items" below.

Output
------
stdout carries exactly one line, ``READY <port>``, once the server listens.
Diagnostics go to stderr.  SIGTERM or SIGINT stop the server with exit code 0.
SIGUSR1 silently drops every client subscription (see "Losing subscriptions"
below).

State file::

    {"sessions_created": N, "sessions_active": M, "subscriptions_dropped": K,
     "writes": [{"node": "ns=2;s=Control/Setpoint", "value": 12.5, "type": "Double"}, ...],
     "identities": ["alice", "cert:operator-1", "anonymous", ...]}

``sessions_created`` counts CreateSession requests that created a server
session (whether or not the session is activated later: a login with a wrong
password counts).  ``sessions_active`` is the number of those sessions not yet
closed (CloseSession at once; connection loss or session timeout within about
1 s, asyncua's session watchdog period).  ``writes`` lists
every successful client write of a Value attribute, in order.
``identities`` has one entry per successful ActivateSession, in order: the
user name of a username login, ``cert:<CN>`` (the subject's commonName, or
the whole subject as RFC 4514 string if it has none) of an X.509 user
certificate login, ``anonymous`` of an anonymous login.  Refused
activations add nothing.  ``subscriptions_dropped`` counts the SIGUSR1
signals handled (also those that found no subscription to drop).

Losing subscriptions (SIGUSR1)
------------------------------
On SIGUSR1 the server forgets every client subscription of every session,
the way a server that silently loses its subscriptions does: each one is
removed from asyncua's SubscriptionService, its publishing loop is cancelled,
its monitored items and queued notifications are deleted.  Nothing tells the
client: no StatusChangeNotification, no error on any other request; the
sessions and connections stay open and usable (Read, Write, Browse, ... work
as before; CreateSubscription creates a new working subscription, with a new
SubscriptionId).  Requests that name a dropped subscription are answered as
for an unknown one (asyncua: DeleteSubscriptions, ModifySubscription,
CreateMonitoredItems ... BadSubscriptionIdInvalid).

Publish requests of a session that lost its subscriptions are answered the
way the spec wants for a session without subscriptions: a ServiceFault
BadNoSubscription, at once (asyncua itself would keep them unanswered).
This applies to the Publish requests the server holds at the moment of the
drop (those not yet past their TimeoutHint) and to every later Publish request
while the session has no subscription; once the session creates a new one,
its Publish requests are queued and answered with data as usual.  So no
Publish request is ever answered with data of a dropped subscription, and a
client that stops publishing on BadNoSubscription (asyncua, async-opcua)
stays connected but receives nothing until it creates a subscription again.

X.509 user identity
-------------------
With ``--user-cert`` every endpoint also announces a user token policy
PolicyId ``certificate``, TokenType Certificate (asyncua's own policy): on
the secure endpoints with the endpoint's own SecurityPolicyUri (Basic256Sha256,
Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss), on the None endpoint with
Basic256Sha256 (the first signing policy).  ActivateSession with an
X509IdentityToken is accepted when:

* the UserTokenSignature verifies: asyncua 1.1.8 checks it itself
  (InternalServer.verify_x509_token, called by InternalSession.
  activate_session) with the public key of the token's certificate over
  server certificate (DER) + the server nonce of CreateSession, algorithm
  rsa-sha1, rsa-sha256 or rsa-pss-sha2-256 as named in the signature (not
  checked against the token policy); a missing or wrong signature or unknown
  algorithm -> BadIdentityTokenInvalid;
* and CertificateData equals one of the --user-cert files byte for byte
  (DER); any other certificate -> BadUserAccessDenied.

Nothing else about the certificate is checked (validity period, issuer,
key usage).  Without --user-cert an X509IdentityToken is refused with
BadIdentityTokenRejected, as before.

Address space
-------------
Namespace ``urn:gateway-rust:test`` is index 2; all variables live in the
Objects folder "Test" and have string NodeIds ``ns=2;s=<id>`` unless noted:

* fixed values, SourceTimestamp 2026-01-02T03:04:05.123456Z, ServerTimestamp
  = time of the read: ``Types/<VariantType>`` (see FIXED below), numeric
  ``ns=2;i=1001``, GUID ``ns=2;g=6f1a2b3c-...-000000000001``, opaque
  ``ns=2;b=AQID``; ``Status/Bad`` (BadSensorFailure, value 0.0 is still sent)
  and ``Status/Uncertain`` (UncertainLastUsableValue, 5.5);
* dynamic, SourceTimestamp = update time: ``Dynamic/Counter`` (UInt32, 1, 2,
  ... one step per period), ``Dynamic/Sine`` (Double, sin(t)),
  ``Analog/Level`` (AnalogItemType, Double, EURange 0..200, counter % 200);
* writable: ``Control/Setpoint`` Double 10.0, ``Control/Enable`` Boolean
  false, ``Control/Mode`` Int16 1.

Benchmark items (``--bench-items N``, N > 0): read-only Double variables
``ns=2;s=Bench/0`` ... ``ns=2;s=Bench/<N-1>`` in the Objects folder "Bench"
(``ns=2;s=Bench``; the "Test" folder is unchanged).  Every ``--period`` seconds
(on a fixed schedule: tick k is due at start + k * period; late ticks are
done at once, one after the other, unless the updater is more than
max(1 s, period) behind, then the missed ticks are dropped) ALL of them get
a new value, ``Bench/<i>`` = tick + i / 1e6 (tick = 1, 2, ...; 0 before the
first update), SourceTimestamp = ServerTimestamp = the time of that update.
The values are set directly on the address space and the data-change
callbacks called in the same pass (one write per item, no per-item type check
or event-loop round trip), so every monitored item gets every change; asyncua
ignores the sampling interval (monitoring is event driven).  Late or dropped
ticks are reported on stderr (at most every 10 s).

Timing: once the address space is built its objects are moved out of the
garbage collector's reach (gc.freeze()); a full collection over them (0.5 to
1 million objects) stalls the event loop for 0.2 to 0.4 s, which delayed
updates at a 0.1 s period.

Publish size: asyncua 1.1.8 puts every queued notification of a
subscription into one PublishResponse and ignores MaxNotificationsPerPublish;
10 000 changed items make a ~340 kB message, more than async-opcua's default
client limit (5 chunks, 327 675 bytes).  This peer sends at most
MaxNotificationsPerPublish (0 or above 1000: 1000, node-opcua's default cap)
data changes per PublishResponse, sets MoreNotifications and sends the rest
with the next Publish requests.

Data-change filters: asyncua 1.1.8 compares a deadband with the previous
*sample* and lets every change through for a percent deadband; this peer
replaces that with the specified behaviour (compare with the last *reported*
value; percent of the EURange, BadFilterNotAllowed without an EURange).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.common.instantiate_util import instantiate
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemService
from asyncua.server.subscription_service import SubscriptionService
from asyncua.server.uaprocessor import UaProcessor
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VT = ua.VariantType
NS_URI = "urn:gateway-rust:test"
APP_URI = "urn:gateway-rust:test-server"
FIXED_TS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)

# (identifier, value, variant type) of the fixed-value variables.
FIXED = [
    ("Types/Boolean", True, VT.Boolean),
    ("Types/SByte", -12, VT.SByte),
    ("Types/Byte", 200, VT.Byte),
    ("Types/Int16", -30000, VT.Int16),
    ("Types/UInt16", 60000, VT.UInt16),
    ("Types/Int32", -2000000000, VT.Int32),
    ("Types/UInt32", 4000000000, VT.UInt32),
    ("Types/Int64", -9000000000000000000, VT.Int64),
    ("Types/UInt64", 18000000000000000000, VT.UInt64),
    ("Types/Float", 1.5, VT.Float),
    ("Types/Double", 3.141592653589793, VT.Double),
    ("Types/String", "héllo, wörld", VT.String),
    ("Types/DateTime", datetime(2026, 11, 24, 8, 0, 0, 123000, tzinfo=timezone.utc), VT.DateTime),
    ("Types/ByteString", b"\x00\x01\xfe\xff", VT.ByteString),
    ("Types/DoubleArray", [1.5, -2.25, 3.0], VT.Double),
    ("Types/Int32Array", [1, 2, 3, 4], VT.Int32),
    ("Types/StringArray", ["a", "b"], VT.String),
    (1001, 42.5, VT.Double),
    (uuid.UUID("6f1a2b3c-0000-4000-8000-000000000001"), 7, VT.Int32),
    (b"\x01\x02\x03", "opaque", VT.String),
    ("Status/Bad", 0.0, VT.Double, ua.StatusCodes.BadSensorFailure),
    ("Status/Uncertain", 5.5, VT.Double, ua.StatusCodes.UncertainLastUsableValue),
]
WRITABLE = [
    ("Control/Setpoint", 10.0, VT.Double),
    ("Control/Enable", False, VT.Boolean),
    ("Control/Mode", 1, VT.Int16),
]
EU_RANGES: dict[ua.NodeId, tuple[float, float]] = {}  # nodes that allow a percent deadband


def warn(message: str) -> None:
    print(f"opcua_server: {message}", file=sys.stderr, flush=True)


def node_id(ident, ns: int) -> ua.NodeId:
    """A NodeId of the kind that matches the Python type of `ident`."""
    kind = {
        str: ua.NodeIdType.String,
        int: ua.NodeIdType.Numeric,
        uuid.UUID: ua.NodeIdType.Guid,
        bytes: ua.NodeIdType.ByteString,
    }[type(ident)]
    return ua.NodeId(ident, ns, kind)


# --------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------
class State:
    def __init__(self, path: str):
        self.path = path
        self.data = {"sessions_created": 0, "sessions_active": 0, "subscriptions_dropped": 0, "writes": [],
                     "identities": []}
        self.save()

    def save(self) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(self.data, file, ensure_ascii=False)
        os.replace(tmp, self.path)


def json_value(value):
    """A JSON-friendly form of a written value."""
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def hook_sessions(server: Server, state: State) -> None:
    """Count sessions by wrapping InternalServer.create_session.

    asyncua's UaProcessor calls ``iserver.create_session(name, external=True)``
    for every CreateSession request, before it validates anything else, so
    ``sessions_created`` counts every CreateSession request (a client that
    then fails ActivateSession, e.g. with a wrong password, still counts).
    The server's own internal session is built directly in InternalServer's
    constructor and is not counted.  A session stops being active on its first
    close_session() call: CloseSession, loss of the connection or the session
    watchdog; asyncua calls it again when the connection closes after a
    CloseSession, hence the set of live sessions.  A session's (synchronous)
    activate_session() is wrapped too: when it returns, the activation
    succeeded and ``session.user`` is what PeerUserManager.get_user returned.
    """
    iserver = server.iserver
    original = iserver.create_session
    live: set[int] = set()

    def create_session(name, *args, external=False, **kwargs):
        session = original(name, *args, external=external, **kwargs)
        if not external:
            return session
        live.add(id(session))
        state.data["sessions_created"] += 1
        state.data["sessions_active"] = len(live)
        state.save()
        close = session.close_session

        async def close_session(*cargs, **ckwargs):
            if id(session) in live:
                live.discard(id(session))
                state.data["sessions_active"] = len(live)
                state.save()
            return await close(*cargs, **ckwargs)

        session.close_session = close_session
        activate = session.activate_session

        def activate_session(*aargs, **akwargs):
            result = activate(*aargs, **akwargs)  # raises ServiceError when refused
            user = session.user
            state.data["identities"].append(user.name if user is not None and user.name else "anonymous")
            state.save()
            return result

        session.activate_session = activate_session
        return session

    iserver.create_session = create_session


# --------------------------------------------------------------------------
# Deadband (replaces asyncua's data-change filtering)
# --------------------------------------------------------------------------
def passes_filter(mdata, last: ua.DataValue | None, new: ua.DataValue) -> bool:
    """Whether `new` must be reported, given the last reported value `last`."""
    if last is None or last.StatusCode != new.StatusCode:
        return True
    flt = mdata.filter
    trigger = flt.Trigger if flt else ua.DataChangeTrigger.StatusValue
    if trigger == ua.DataChangeTrigger.Status:
        return False
    if trigger == ua.DataChangeTrigger.StatusValueTimestamp and last.SourceTimestamp != new.SourceTimestamp:
        return True
    old_v, new_v = last.Value.Value, new.Value.Value
    if old_v == new_v:
        return False
    kind = flt.DeadbandType if flt else ua.DeadbandType.None_
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old_v, new_v))
    if kind == ua.DeadbandType.None_ or not numeric:
        return True
    limit = flt.DeadbandValue
    if kind == ua.DeadbandType.Percent:
        # (a ModifyMonitoredItems can bring a percent filter to a node without EURange)
        low, high = EU_RANGES.get(getattr(mdata, "nodeid", None), (0.0, 0.0))
        limit = flt.DeadbandValue / 100.0 * (high - low)
    return abs(new_v - old_v) > limit


MAX_NOTIFICATIONS_PER_PUBLISH = 1000


def patch_publish_limit() -> None:
    """At most MaxNotificationsPerPublish data changes per PublishResponse (see module doc)."""
    create = SubscriptionService.create_subscription

    async def create_subscription(self, params, *args, **kwargs):
        result = await create(self, params, *args, **kwargs)
        requested = params.MaxNotificationsPerPublish
        self.subscriptions[result.SubscriptionId].max_notifications = (
            min(requested, MAX_NOTIFICATIONS_PER_PUBLISH) if requested else MAX_NOTIFICATIONS_PER_PUBLISH
        )
        return result

    pop_datachanges = InternalSubscription._pop_triggered_datachanges
    pop_result = InternalSubscription._pop_publish_result
    publish = InternalSubscription.publish_results

    def pop_triggered_datachanges(self, result):
        queued = self._triggered_datachanges
        limit = getattr(self, "max_notifications", 0)
        if not limit or sum(map(len, queued.values())) <= limit:
            pop_datachanges(self, result)
            return
        items = []
        for mid in list(queued):
            take = queued[mid][: limit - len(items)]
            items += take
            if len(take) == len(queued[mid]):
                del queued[mid]
            else:
                queued[mid] = queued[mid][len(take):]
            if len(items) >= limit:
                break
        result.NotificationMessage.NotificationData.append(ua.DataChangeNotification(MonitoredItems=items))

    def pop_publish_result(self):
        result = pop_result(self)
        if self._triggered_datachanges:
            result.MoreNotifications = True
        return result

    async def publish_results(self, requestdata=None):
        # The return value says whether `requestdata` (if any) was used.
        sent = await publish(self, requestdata)
        more = sent
        while more and self._triggered_datachanges and not self._closing:
            # The next queued Publish request, or (none left) register for the next one.
            more = await publish(self, None)
        return sent

    SubscriptionService.create_subscription = create_subscription
    InternalSubscription._pop_triggered_datachanges = pop_triggered_datachanges
    InternalSubscription._pop_publish_result = pop_publish_result
    InternalSubscription.publish_results = publish_results


def patch_deadband() -> None:
    create = MonitoredItemService._create_data_change_monitored_item

    async def create_item(self, params):
        flt = params.RequestedParameters.Filter
        nodeid = params.ItemToMonitor.NodeId
        # Duck typing: the decoder's DataChangeFilter class is not always
        # ua.DataChangeFilter (asyncua regenerates some structure classes).
        if getattr(flt, "DeadbandType", None) == ua.DeadbandType.Percent and nodeid not in EU_RANGES:
            result = ua.MonitoredItemCreateResult()
            result.StatusCode = ua.StatusCode(ua.StatusCodes.BadFilterNotAllowed)
            return result
        result = await create(self, params)
        if result.StatusCode.is_good():
            mdata = self._monitored_items[result.MonitoredItemId]
            mdata.nodeid = nodeid
        return result

    async def datachange_callback(self, handle, value, error=None):
        if error:
            await self.trigger_statuschange(error)
            return
        mid = self._monitored_datachange[handle]
        mdata = self._monitored_items[mid]
        # The first call comes from inside create() (the initial value).
        if passes_filter(mdata, getattr(mdata, "last_reported", None), value):
            # No copy: DataValue and Variant are frozen and no write path
            # mutates a stored value (a deepcopy costs ~30 us per change).
            mdata.last_reported = value
            event = ua.MonitoredItemNotification(ClientHandle=mdata.client_handle, Value=value)
            await self.isub.enqueue_datachange_event(mid, event, mdata.queue_size)

    MonitoredItemService._create_data_change_monitored_item = create_item
    MonitoredItemService.datachange_callback = datachange_callback


# --------------------------------------------------------------------------
# Losing subscriptions (SIGUSR1)
# --------------------------------------------------------------------------
PUBLISH_REQUEST = ua.NodeId(ua.ObjectIds.PublishRequest_Encoding_DefaultBinary)


async def never_publish(requestdata=None) -> bool:
    """InternalSubscription.publish_results of a dropped subscription: sends
    nothing and never takes a Publish request (False: `requestdata` unused)."""
    return False


def silence_subscription(sub: InternalSubscription) -> None:
    """Stop a client subscription for good, without a word to the client.

    What InternalSubscription.stop() does, done synchronously (the signal
    handler runs between two steps of the other tasks, so no data-change
    callback or publishing pass is half done): cancel the publishing loop
    (it is suspended in its sleep, so it sends nothing more), delete the
    monitored items (their data-change callbacks leave the address space).
    Also empty the queues and replace publish_results, so that nothing that
    still holds a reference (UaProcessor's table of subscriptions waiting for
    a Publish request, a publishing interval of 0 without loop) can send data
    or take a Publish request.  No StatusChangeNotification is queued.
    """
    sub._closing = True  # noqa: SLF001 (asyncua internals, pinned version)
    if sub._task is not None:  # noqa: SLF001
        sub._task.cancel()  # noqa: SLF001
        sub._task = None  # noqa: SLF001
    sub.monitored_item_srv.delete_all_monitored_items()
    sub._triggered_datachanges.clear()  # noqa: SLF001
    sub._triggered_events.clear()  # noqa: SLF001
    sub._triggered_statuschanges.clear()  # noqa: SLF001
    sub._not_acknowledged_results.clear()  # noqa: SLF001
    sub.publish_results = never_publish


def session_has_subscription(processor: UaProcessor) -> bool:
    session = processor.session
    service = processor.iserver.subscription_service
    return session is not None and any(sub.session_id == session.session_id for sub in service.subscriptions.values())


def answer_orphan_publishes(processor: UaProcessor) -> int:
    """Answer the Publish requests `processor` holds with BadNoSubscription when
    its session has no subscription (see "Losing subscriptions").  Requests
    past their TimeoutHint are discarded unanswered, as asyncua's
    UaProcessor.get_publish_request does.  Returns the number answered."""
    if session_has_subscription(processor):
        return 0
    queued = processor._publish_requests  # noqa: SLF001 -- deque of PublishRequestData
    answered = 0
    now = time.monotonic()
    while queued:
        data = queued.popleft()
        hint = data.requesthdr.TimeoutHint
        if hint and now - data.timestamp >= hint / 1000:
            continue
        response = ua.ServiceFault()
        response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadNoSubscription)
        processor.send_response(data.requesthdr.RequestHandle, data.seqhdr, response)
        answered += 1
    return answered


def patch_publish_without_subscription() -> None:
    """BadNoSubscription for Publish requests of a session that lost its subscriptions.

    Wraps UaProcessor._process_message: asyncua handles the Publish request
    first (session and permission checks, acknowledgements, handing it to a
    subscription waiting for one, else queueing it in _publish_requests);
    if the connection's session lost its subscriptions to a SIGUSR1 and has
    none now, the queued request is answered with BadNoSubscription instead.
    Connections that never lost a subscription behave as in asyncua.
    """
    process = UaProcessor._process_message  # noqa: SLF001

    async def process_message(self, typeid, requesthdr, seqhdr, body):
        result = await process(self, typeid, requesthdr, seqhdr, body)
        if typeid == PUBLISH_REQUEST and getattr(self, "subscriptions_dropped", False):
            answer_orphan_publishes(self)
        return result

    UaProcessor._process_message = process_message  # noqa: SLF001


def drop_subscriptions(server: Server, state: State) -> None:
    """SIGUSR1: forget every client subscription (see "Losing subscriptions")."""
    service = server.iserver.subscription_service
    sessions = set()
    dropped = []
    for sub_id, sub in list(service.subscriptions.items()):
        if sub.pub_request_callback is None:  # a server-internal subscription (no Publish requests)
            continue
        del service.subscriptions[sub_id]
        silence_subscription(sub)
        sessions.add(sub.session_id)
        dropped.append(sub_id)
    answered = 0
    for protocol in list(server.bserver.clients) if server.bserver else []:
        processor = protocol.processor
        if processor is None or processor.session is None or processor.session.session_id not in sessions:
            continue
        processor.subscriptions_dropped = True
        for sub_id in dropped:  # subscriptions that waited for a Publish request of this connection
            processor._publish_results_subs.pop(sub_id, None)  # noqa: SLF001
        answered += answer_orphan_publishes(processor)
    state.data["subscriptions_dropped"] += 1
    state.save()
    warn(f"SIGUSR1: dropped {len(dropped)} subscriptions of {len(sessions)} sessions, "
         f"answered {answered} pending Publish requests with BadNoSubscription")


# --------------------------------------------------------------------------
# Users and certificates
# --------------------------------------------------------------------------
class TokenCertificate(bytes):
    """CertificateData of an X509IdentityToken whose signature asyncua verified.

    asyncua passes ``certificate=`` to get_user for every token type (for an
    anonymous token it is the secure channel's client certificate), so the
    wrapped verify_x509_token marks the user token's certificate with this type.
    """


def hook_x509_tokens(server: Server) -> None:
    iserver = server.iserver
    verify = iserver.verify_x509_token  # raises unless the user token signature verifies

    def verify_x509_token(isession, token, signature):
        return TokenCertificate(verify(isession, token, signature))

    iserver.verify_x509_token = verify_x509_token


def load_user_cert(path: str) -> tuple[bytes, str]:
    """(DER bytes, "cert:<CN>") of a DER or PEM certificate file."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        cert = x509.load_pem_x509_certificate(data)
    else:
        cert = x509.load_der_x509_certificate(data)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else cert.subject.rfc4514_string()
    return cert.public_bytes(Encoding.DER), f"cert:{name}"


class PeerUserManager:
    """Accepts anonymous logins (when offered), the --users passwords and the
    --user-cert certificates (compared byte for byte, DER)."""

    def __init__(self, users: dict[str, str], certs: dict[bytes, str] | None = None):
        self.users = users
        self.certs = certs or {}

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if isinstance(certificate, TokenCertificate):  # X509IdentityToken, signature checked
            name = self.certs.get(bytes(certificate))
            return User(role=UserRole.User, name=name) if name else None  # None -> BadUserAccessDenied
        if username is None:  # anonymous (the token type was checked by asyncua)
            return User(role=UserRole.User)
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None  # -> BadUserAccessDenied


def ensure_certificate(pki_dir: Path) -> tuple[Path, Path]:
    """Create server_cert.der + server_key.pem in `pki_dir` unless both exist."""
    cert_path, key_path = pki_dir / "server_cert.der", pki_dir / "server_key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    pki_dir.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "Gateway_Rust test server",
        {"organizationName": "Gateway_Rust"},
        [
            x509.UniformResourceIdentifier(APP_URI),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=3650,
    )
    for path, content in ((key_path, cert_gen.dump_private_key_as_pem(key)), (cert_path, cert.public_bytes(Encoding.DER))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)
    return cert_path, key_path


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------
async def build(args: argparse.Namespace, state: State) -> tuple[Server, dict]:
    users = dict(u.split(":", 1) for u in args.users.split(",")) if args.users else {}
    server = Server(user_manager=PeerUserManager(users, args.user_certs))
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/gateway-test/")
    server.set_server_name("Gateway_Rust test server")
    server._application_uri = APP_URI  # noqa: SLF001 -- written to namespace 1 by init()
    await server.init()
    server.disable_clock()

    policies = [ua.SecurityPolicyType.NoSecurity]
    if args.secure:
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ]
    server.set_security_policy(policies)
    if args.pki_dir:
        cert_path, key_path = ensure_certificate(Path(args.pki_dir))
        await server.load_certificate(str(cert_path))
        await server.load_private_key(str(key_path))
    tokens = [] if args.no_anonymous else [ua.AnonymousIdentityToken]
    if users:
        tokens.append(ua.UserNameIdentityToken)
    if args.user_certs:
        tokens.append(ua.X509IdentityToken)
        hook_x509_tokens(server)
    server.set_identity_tokens(tokens)

    ns = await server.register_namespace(NS_URI)
    assert ns == 2, f"namespace index {ns}"
    folder = await server.nodes.objects.add_folder(ua.NodeId("Test", ns), ua.QualifiedName("Test", ns))

    def add(ident, value, vtype):
        nid = node_id(ident, ns)
        name = ident if isinstance(ident, str) else str(nid.to_string())
        return folder.add_variable(nid, ua.QualifiedName(name, ns), ua.Variant(value, vtype), vtype)

    # Fixed values are served by a read callback, so that ServerTimestamp is the
    # time of the read and a Bad status keeps its value (asyncua's write path
    # replaces the value of a Bad DataValue with Null).
    for ident, value, vtype, *status in FIXED:
        var = await add(ident, value, vtype)
        if isinstance(value, list):
            await var.write_attribute(ua.AttributeIds.ValueRank, ua.DataValue(ua.Variant(1, VT.Int32)))
            await var.write_attribute(ua.AttributeIds.ArrayDimensions, ua.DataValue(ua.Variant([0], VT.UInt32)))
        variant = ua.Variant(value, vtype)
        code = ua.StatusCode(status[0] if status else ua.StatusCodes.Good)

        def read_fixed(_nid, _attr, variant=variant, code=code):
            return ua.DataValue(variant, code, SourceTimestamp=FIXED_TS, ServerTimestamp=datetime.now(timezone.utc))

        server.iserver.set_attribute_value_callback(var.nodeid, read_fixed)

    for ident, value, vtype in WRITABLE:
        var = await add(ident, value, vtype)
        await var.set_writable()

    dynamic = {
        "counter": await add("Dynamic/Counter", 1, VT.UInt32),
        "sine": await add("Dynamic/Sine", 0.0, VT.Double),
    }
    # Analog/Level: an AnalogItemType instance with its EURange property.
    level_id = node_id("Analog/Level", ns)
    analog_type = server.get_node(ua.NodeId(ua.ObjectIds.AnalogItemType))
    level = (await instantiate(folder, analog_type, nodeid=level_id, bname=ua.QualifiedName("Analog/Level", ns),
                               idx=ns, instantiate_optional=False))[0]
    await level.write_attribute(ua.AttributeIds.DataType, ua.DataValue(ua.Variant(ua.NodeId(ua.ObjectIds.Double), VT.NodeId)))
    eu_range = await level.get_child(ua.QualifiedName("EURange", 0))
    await eu_range.write_value(ua.Range(Low=0.0, High=200.0))
    EU_RANGES[level_id] = (0.0, 200.0)
    dynamic["level"] = level

    def on_write(event, _dispatcher):
        if not event.is_external:
            return
        for item, result in zip(event.request_params.NodesToWrite, event.response_params):
            if item.AttributeId == ua.AttributeIds.Value and result.is_good():
                variant = item.Value.Value
                state.data["writes"].append(
                    {"node": item.NodeId.to_string(), "value": json_value(variant.Value), "type": variant.VariantType.name}
                )
        state.save()

    server.subscribe_server_callback(CallbackType.PostWrite, on_write)
    hook_sessions(server, state)
    if args.bench_items:
        dynamic["bench"] = await add_bench(server, ns, args.bench_items)
    return server, dynamic


async def add_bench(server: Server, ns: int, count: int) -> list:
    """Create the Bench folder and its `count` Double variables.

    asyncua's AddNodes scans all references of the parent for every new child
    (twice), which makes 10 000 children of one folder take ~100 s; so the
    variables are added without a parent and the folder references are
    appended here directly.  Returns the variables' Value AttributeValue
    objects, in index order.
    """
    folder = await server.nodes.objects.add_folder(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
    service = server.iserver.node_mgt_service
    aspace = server.iserver.aspace
    parent = aspace[folder.nodeid]
    has_component = ua.NodeId(ua.ObjectIds.HasComponent)
    type_definition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
    now = datetime.now(timezone.utc)
    values = []
    for i in range(count):
        name = f"Bench/{i}"
        attrs = ua.VariableAttributes(
            DisplayName=ua.LocalizedText(name),
            Description=ua.LocalizedText(name),
            Value=ua.Variant(i / 1e6, VT.Double),
            DataType=ua.NodeId(ua.ObjectIds.Double),
            ValueRank=ua.ValueRank.Scalar,
            AccessLevel=ua.AccessLevel.CurrentRead.mask,
            UserAccessLevel=ua.AccessLevel.CurrentRead.mask,
            Historizing=False,
        )
        item = ua.AddNodesItem(
            ParentNodeId=ua.NodeId(),  # null: see above
            ReferenceTypeId=has_component,
            RequestedNewNodeId=ua.NodeId(name, ns, ua.NodeIdType.String),
            BrowseName=ua.QualifiedName(name, ns),
            NodeClass_=ua.NodeClass.Variable,
            NodeAttributes=attrs,
            TypeDefinition=type_definition,
        )
        result = service._add_node(item, User(role=UserRole.Admin), check=False)  # noqa: SLF001
        result.StatusCode.check()
        node = aspace[item.RequestedNewNodeId]
        item.ParentNodeId = folder.nodeid
        parent.references.append(ua.ReferenceDescription(
            ReferenceTypeId=has_component, IsForward=True, NodeId=node.nodeid, BrowseName=item.BrowseName,
            DisplayName=attrs.DisplayName, NodeClass_=ua.NodeClass.Variable, TypeDefinition=type_definition,
        ))
        service._add_ref_to_parent(node, item, parent)  # noqa: SLF001 -- the inverse reference
        attval = node.attributes[ua.AttributeIds.Value]
        attval.value = ua.DataValue(ua.Variant(i / 1e6, VT.Double), SourceTimestamp=now, ServerTimestamp=now)
        values.append(attval)
    return values


async def update_bench(values: list, period: float) -> None:
    """Every `period`: Bench/<i> = tick + i / 1e6 for every i, on a fixed schedule.

    What AddressSpace.write_attribute_value does for each item, minus its
    per-item checks: store the DataValue, then call the data-change callbacks
    (the monitored items' datachange_callback; it does not suspend, so the
    whole pass runs without an event-loop round trip per item).
    """
    loop = asyncio.get_running_loop()
    double = VT.Double
    max_behind = max(1.0, period)
    next_due = loop.time()
    tick, late, dropped, worst, reported = 0, 0, 0, 0.0, loop.time()
    while True:
        next_due += period
        await asyncio.sleep(max(0.0, next_due - loop.time()))
        tick += 1
        started = loop.time()
        now = datetime.now(timezone.utc)
        for i, attval in enumerate(values):
            dv = ua.DataValue(ua.Variant(tick + i / 1e6, double), SourceTimestamp=now, ServerTimestamp=now)
            attval.value = dv
            if attval.datachange_callbacks:
                for handle, callback in list(attval.datachange_callbacks.items()):
                    try:
                        await callback(handle, dv)
                    except Exception as exc:  # noqa: BLE001 -- like asyncua: log and go on
                        warn(f"bench data-change callback failed: {exc!r}")
        finished = loop.time()
        worst = max(worst, finished - started)
        if started - next_due > period:
            late += 1
        if finished - next_due > max_behind:  # too far behind: skip the missed ticks
            missed = int((finished - next_due) / period)
            dropped += missed
            next_due += missed * period
        if (late or dropped) and finished - reported >= 10.0:
            warn(f"bench, last {finished - reported:.0f} s: {late} ticks started more than one period late, "
                 f"{dropped} ticks dropped (over {max_behind} s behind), longest update pass {worst:.3f} s")
            late, dropped, reported = 0, 0, finished
        if finished - reported >= 10.0:
            worst, reported = 0.0, finished


async def update_dynamic(server: Server, nodes: dict, period: float) -> None:
    """Every `period`: Counter += 1, Sine = sin(t), Level = counter % 200."""
    counter = 1
    while True:
        now = datetime.now(timezone.utc)
        values = {
            "counter": ua.Variant(counter, VT.UInt32),
            "sine": ua.Variant(math.sin(now.timestamp()), VT.Double),
            "level": ua.Variant(float(counter % 200), VT.Double),
        }
        for key, variant in values.items():
            dv = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(nodes[key].nodeid, dv)
        await asyncio.sleep(period)
        counter = (counter + 1) & 0xFFFFFFFF


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="OPC-UA peer server for the gateway's integration tests.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--state", required=True, metavar="FILE", help="JSON state file")
    parser.add_argument("--period", type=float, default=0.1, help="dynamic value period in s (default 0.1)")
    parser.add_argument("--secure", action="store_true", help="also offer signed/encrypted endpoints")
    parser.add_argument("--pki-dir", metavar="DIR", help="where the server certificate and key live")
    parser.add_argument("--users", metavar="USER:PASS[,USER:PASS]", help="accepted username/password pairs")
    parser.add_argument("--user-cert", action="append", default=[], metavar="FILE[,FILE]",
                        help="accepted X.509 user certificate (DER or PEM); repeatable; needs --secure")
    parser.add_argument("--no-anonymous", action="store_true", help="refuse anonymous logins")
    parser.add_argument("--bench-items", type=int, default=0, metavar="N",
                        help="add N benchmark Doubles ns=2;s=Bench/<i>, all updated every period (default 0: none)")
    parser.add_argument("--verbose", action="store_true", help="asyncua info logging on stderr")
    args = parser.parse_args(argv)
    if args.secure and not args.pki_dir:
        parser.error("--secure needs --pki-dir")
    args.user_certs = {}  # DER -> "cert:<CN>"
    for path in (p for item in args.user_cert for p in item.split(",") if p):
        try:
            der, name = load_user_cert(path)
        except (OSError, ValueError) as exc:
            parser.error(f"--user-cert {path}: {exc}")
        args.user_certs[der] = name
    if args.user_cert and not args.user_certs:
        parser.error("--user-cert expects FILE[,FILE]")
    if args.user_certs and not args.secure:
        parser.error("--user-cert needs --secure (the user token signature needs a signing policy)")
    if args.no_anonymous and not (args.users or args.user_certs):
        parser.error("--no-anonymous needs --users or --user-cert")
    if args.bench_items < 0:
        parser.error("--bench-items must be >= 0")
    if args.period <= 0:
        parser.error("--period must be > 0")
    if args.users and not all(":" in u for u in args.users.split(",")):
        parser.error("--users expects user:pass[,user:pass]")
    return args


async def run(args: argparse.Namespace) -> int:
    patch_deadband()
    patch_publish_limit()
    patch_publish_without_subscription()
    state = State(args.state)
    server, dynamic = await build(args, state)
    gc.freeze()  # see "Timing" in the module doc
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, drop_subscriptions, server, state)
    try:
        await server.start()
    except OSError as exc:
        warn(f"could not listen on 127.0.0.1:{args.port}: {exc}")
        return 1
    bench = dynamic.pop("bench", None)
    updaters = [asyncio.create_task(update_dynamic(server, dynamic, args.period))]
    if bench:
        updaters.append(asyncio.create_task(update_bench(bench, args.period)))
    print(f"READY {args.port}", flush=True)
    await stopping.wait()
    for updater in updaters:
        updater.cancel()
    await server.stop()
    return 0


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
