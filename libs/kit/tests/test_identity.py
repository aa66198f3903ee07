"""Service credentials and tenant tokens (llmesh.kit.identity, docs/adr/0023): what verifies, and
every way a token is refused (expired, tampered, forged, wrong audience, wrong kind, wrong
issuer), with the clock skew allowed; the gate's allow-lists; the files `provision` writes."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from llmesh.kit import identity
from llmesh.kit.errors import PermissionDenied, Unauthenticated
from llmesh.kit.identity import SERVICE, TENANT, Caller, Gate, Issuer, Signer, Verifier


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _issuer(signer: Signer, *kinds: str) -> Issuer:
    trust = {"issuers": [{"key_id": signer.key_id, "public_key": signer.public_key_b64, "issues": list(kinds)}]}
    return next(iter(Verifier.from_trust(trust)._issuers.values()))


@pytest.fixture
def keys():
    clock = Clock()
    mesh = Signer.generate("mesh-1")
    mesh._clock = clock
    tenancy = Signer.generate("tenancy-1")
    tenancy._clock = clock
    verifier = Verifier([_issuer(mesh, SERVICE), _issuer(tenancy, TENANT)], clock=clock)
    return clock, mesh, tenancy, verifier


def _reclaim(token: str, **changes) -> str:
    """The token with its claims changed, signature kept (what a tamperer can do)."""
    body, _, signature = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    raw = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


def test_a_service_credential_and_a_tenant_token_verify(keys):
    _, mesh, tenancy, verifier = keys
    claims = verifier.verify(mesh.service_credential("router"), SERVICE)
    assert (claims.kind, claims.subject, claims.issuer) == (SERVICE, "router", "mesh-1")
    token = tenancy.tenant_token("t-1", key_id="k-1", business_unit="bu", clearance="internal", ttl_s=300)
    claims = verifier.verify(token, TENANT)
    assert (claims.subject, claims.key_id, claims.business_unit, claims.clearance) == ("t-1", "k-1", "bu", "internal")


def test_an_expired_token_is_refused_after_the_allowed_skew(keys):
    clock, _, tenancy, verifier = keys
    token = tenancy.tenant_token("t-1", key_id="k-1", ttl_s=300)
    clock.now += 300 + identity.CLOCK_SKEW_S - 1
    verifier.verify(token, TENANT)  # within the skew another machine's clock may have
    clock.now += 2
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token, TENANT)  # also from the cache of verified tokens


def test_a_token_from_the_future_is_refused_beyond_the_skew(keys):
    clock, _, tenancy, verifier = keys
    early = tenancy.tenant_token("t-1", key_id="k-1", ttl_s=300)
    clock.now -= identity.CLOCK_SKEW_S - 1
    verifier.verify(early, TENANT)
    clock.now -= 2
    with pytest.raises(Unauthenticated, match="not valid yet"):
        Verifier(verifier._issuers.values(), clock=clock).verify(early, TENANT)


def test_tampered_claims_do_not_verify(keys):
    _, _, tenancy, verifier = keys
    token = tenancy.tenant_token("t-1", key_id="k-1", ttl_s=300)
    for forged in (_reclaim(token, sub="t-2"), _reclaim(token, exp=4_000_000_000)):
        with pytest.raises(Unauthenticated, match="signature does not verify"):
            verifier.verify(forged, TENANT)


def test_a_token_signed_by_an_unknown_key_is_refused_even_with_a_known_key_id(keys):
    _, _, _, verifier = keys
    forger = Signer.generate("tenancy-1")  # claims tenancy's key id, signs with its own key
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verifier.verify(forger.tenant_token("t-1", key_id="k-1", ttl_s=300), TENANT)
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(Signer.generate("other").service_credential("router"), SERVICE)


def test_a_wrong_audience_is_refused(keys):
    clock, _, tenancy, verifier = keys
    token = tenancy.tenant_token("t-1", key_id="k-1", ttl_s=300)
    body, _, _ = _reclaim(token, aud="someone-else").partition(".")
    resigned = body + "." + base64.urlsafe_b64encode(tenancy._key.sign(body.encode())).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="audience"):
        verifier.verify(resigned, TENANT)


def test_each_issuer_issues_its_own_kind_only(keys):
    _, mesh, tenancy, verifier = keys
    # Tenancy's key cannot make a service credential, the mesh key no tenant token.
    with pytest.raises(Unauthenticated, match="may not issue svc"):
        verifier.verify(tenancy.service_credential("router"), SERVICE)
    with pytest.raises(Unauthenticated, match="may not issue tenant"):
        verifier.verify(mesh.tenant_token("t-1", key_id="k", ttl_s=60), TENANT)
    # A tenant token is not a service credential, nor the other way round.
    with pytest.raises(Unauthenticated, match="not a svc one"):
        verifier.verify(tenancy.tenant_token("t-1", key_id="k", ttl_s=60), SERVICE)


@pytest.mark.parametrize("junk", ["", "x", "a.b.c", "!!!.???", "e30.AAAA", "x" * 5000])
def test_malformed_tokens_are_refused(keys, junk):
    _, _, _, verifier = keys
    with pytest.raises(Unauthenticated):
        verifier.verify(junk, SERVICE)


def test_the_cache_of_verified_tokens_is_bounded(keys):
    clock, mesh, _, _ = keys
    verifier = Verifier([_issuer(mesh, SERVICE)], cache_size=3, clock=clock)
    for n in range(10):
        verifier.verify(mesh.service_credential(f"svc-{n}"), SERVICE)
    assert len(verifier._cache) == 3


def test_the_gate_admits_listed_callers_and_names_what_is_wrong(keys):
    _, mesh, tenancy, verifier = keys
    me = identity.Identity("cache", mesh.service_credential("cache"), verifier)
    gate = Gate(me, {"pkg.Cache/Lookup": frozenset({"router"}), "pkg.Cache/Open": identity.PUBLIC})
    router = ((identity.SERVICE_METADATA_KEY, mesh.service_credential("router")),)
    token = tenancy.tenant_token("t-1", key_id="k-1", ttl_s=300)

    caller = gate.admit("/pkg.Cache/Lookup", (*router, (identity.TENANT_TOKEN_METADATA_KEY, token)))
    assert caller.service == "router" and caller.tenant.subject == "t-1"
    with pytest.raises(Unauthenticated, match="needs a service credential"):
        gate.admit("/pkg.Cache/Lookup", ())
    with pytest.raises(PermissionDenied, match="not open to classifier"):
        gate.admit("/pkg.Cache/Lookup", ((identity.SERVICE_METADATA_KEY, mesh.service_credential("classifier")),))
    with pytest.raises(PermissionDenied, match="not open to router"):  # not listed: the operator's only
        gate.admit("/pkg.Cache/Wipe", router)
    assert gate.admit("/pkg.Cache/Wipe", ((identity.SERVICE_METADATA_KEY, mesh.service_credential("operator")),))
    assert gate.admit("/pkg.Cache/Open", ()) == Caller(None)
    assert gate.admit("/grpc.health.v1.Health/Check", ()) == Caller(None)
    with pytest.raises(Unauthenticated, match="tenant token"):
        gate.admit("/pkg.Cache/Lookup", (*router, (identity.TENANT_TOKEN_METADATA_KEY, token + "x")))


def test_tenant_checks_follow_the_caller():
    token = identity.set_caller(Caller("router", identity.Claims(TENANT, "t-1", "k", 0, 1)))
    try:
        identity.require_tenant("t-1")
        with pytest.raises(PermissionDenied, match="another tenant"):
            identity.require_tenant("t-2")
        assert identity.tenant_scope() == "t-1"
        identity.set_caller(Caller("router"))
        with pytest.raises(Unauthenticated, match="without a tenant token"):
            identity.require_tenant("t-1")
        with pytest.raises(PermissionDenied):
            identity.tenant_scope()
        identity.set_caller(Caller(identity.OPERATOR))
        identity.require_tenant("t-2")
        assert identity.tenant_scope() is None
    finally:
        identity._caller.reset(token)


def test_an_admin_token_is_its_own_kind_from_an_issuer_that_may_issue_it(keys):
    clock, mesh, tenancy, _ = keys
    verifier = Verifier([_issuer(mesh, SERVICE), _issuer(tenancy, TENANT, identity.ADMIN)], clock=clock)
    token = tenancy.admin_token(identity.TENANT_ADMIN, tenant_id="t-1", key_id="key:k-1", ttl_s=300)
    claims = verifier.verify(token, identity.ADMIN)
    assert (claims.kind, claims.role, claims.subject, claims.key_id) == ("admin", "tenant_admin", "t-1", "key:k-1")
    # Never taken for a tenant token or a credential, nor the other way round.
    with pytest.raises(Unauthenticated, match="not a tenant one"):
        verifier.verify(token, TENANT)
    with pytest.raises(Unauthenticated, match="not a svc one"):
        verifier.verify(token, SERVICE)
    with pytest.raises(Unauthenticated, match="is a tenant token"):
        verifier.verify(tenancy.tenant_token("t-1", key_id="k", ttl_s=60), identity.ADMIN)
    # The mesh key may not issue one; nor may tenancy's key where the trust file does not say so.
    with pytest.raises(Unauthenticated, match="may not issue admin"):
        verifier.verify(mesh.admin_token(identity.PLATFORM_ADMIN, ttl_s=60), identity.ADMIN)
    with pytest.raises(Unauthenticated, match="may not issue admin"):
        keys[3].verify(token, identity.ADMIN)
    # A role is part of the signed claims.
    with pytest.raises(Unauthenticated, match="signature"):
        verifier.verify(_reclaim(token, role=identity.PLATFORM_ADMIN), identity.ADMIN)
    with pytest.raises(ValueError):
        tenancy.admin_token("", ttl_s=60)


def test_the_gate_takes_admin_tokens_on_the_methods_that_list_them(keys):
    clock, mesh, tenancy, _ = keys
    verifier = Verifier([_issuer(mesh, SERVICE), _issuer(tenancy, TENANT, identity.ADMIN)], clock=clock)
    me = identity.Identity("cache", mesh.service_credential("cache"), verifier)
    admins = frozenset({identity.OPERATOR, identity.ADMIN_TOKEN_HOLDERS})
    gate = Gate(me, {"pkg.Cache/Delete": admins})
    token = tenancy.admin_token(identity.TENANT_ADMIN, tenant_id="t-1", ttl_s=300)
    admin = ((identity.ADMIN_TOKEN_METADATA_KEY, token),)
    caller = gate.admit("/pkg.Cache/Delete", admin)
    assert caller.service is None and caller.admin.role == identity.TENANT_ADMIN
    # The admin token decides, also next to the operator's credential.
    operator = ((identity.SERVICE_METADATA_KEY, mesh.service_credential("operator")),)
    assert gate.admit("/pkg.Cache/Delete", (*operator, *admin)).admin.subject == "t-1"
    assert gate.admit("/pkg.Cache/Delete", operator) == Caller("operator")
    with pytest.raises(Unauthenticated, match="needs a service credential"):  # not listed: not taken
        gate.admit("/pkg.Cache/Wipe", admin)
    with pytest.raises(PermissionDenied, match=r"only to operator\)"):
        gate.admit("/pkg.Cache/Delete", ((identity.SERVICE_METADATA_KEY, mesh.service_credential("router")),))
    clock.now += 3600
    with pytest.raises(Unauthenticated, match="expired"):
        gate.admit("/pkg.Cache/Delete", admin)


def test_admin_checks_follow_the_tokens_role():
    def claims(role: str, tenant: str = "") -> identity.Claims:
        return identity.Claims(identity.ADMIN, tenant, "k", 0, 1, role=role)

    token = identity.set_caller(Caller(None, admin=claims(identity.TENANT_ADMIN, "t-1")))
    try:
        assert identity.require_admin("t-1")
        with pytest.raises(PermissionDenied, match="tenant_admin.*'t-2'"):
            identity.require_admin("t-2")
        identity.set_caller(Caller(None, admin=claims(identity.TENANT_ADMIN)))
        with pytest.raises(PermissionDenied):  # a tenant admin without a tenant reaches none
            identity.require_admin("")
        identity.set_caller(Caller(None, admin=claims(identity.PLATFORM_ADMIN)))
        assert identity.require_admin("t-2")
        identity.set_caller(Caller(None, admin=claims(identity.AUDITOR, "t-1")))
        with pytest.raises(PermissionDenied, match="auditor"):
            identity.require_admin("t-1")
        # No admin token: the caller's older checks apply.
        identity.set_caller(Caller(identity.OPERATOR))
        assert identity.require_admin("t-1") is False
        identity.set_caller(None)
        assert identity.require_admin("t-1") is False
    finally:
        identity._caller.reset(token)


def test_provision_writes_private_keys_once_and_credentials_that_verify(tmp_path):
    directory = identity.provision(tmp_path / "id")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for name in (identity.MESH_KEY, identity.TENANCY_KEY, "router.credential", "operator.credential"):
        assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600, name
    mesh_key = (directory / identity.MESH_KEY).read_text()
    credential = identity.credential_file(directory, "router").read_text()
    identity.provision(directory)  # a restart keeps keys and credentials still good
    assert (directory / identity.MESH_KEY).read_text() == mesh_key
    assert identity.credential_file(directory, "router").read_text() == credential

    tenancy = identity.load_provisioned(directory, "tenancy")
    assert tenancy.tenant_signer is not None
    router = identity.load_provisioned(directory, "router")
    assert router.verifier.verify(tenancy.credential, SERVICE).subject == "tenancy"
    with pytest.raises(ValueError, match="not of 'cache'"):
        identity.Identity.from_files(
            "cache", str(identity.credential_file(directory, "router")), str(directory / "trust.json")
        )
