#!/usr/bin/env python3
"""Independent check of the gateway's Bulk Data export (run by .ci/bulk-client.sh).

  bulk_check.py jwks PEM KID ALG > key.jwks
      the test key as a private JWKS with its registered kid (smart-fetch signs with the key's
      own kid and alg only when given a .jwks file)
  bulk_check.py compare BASE CLIENT_ID PEM KID ALG OUT_DIR
      every NDJSON line smart-fetch wrote parses, holds the type its file names, appears once,
      and the ids of each type equal what a FHIR search returns to the same partner (a token is
      obtained independently here, with jwcrypto); at least one Encounter was exported
"""
import json
import pathlib
import sys
import time
import urllib.parse
import urllib.request
import uuid

from jwcrypto import jwk, jwt


def private_jwk(pem, kid, alg):
    key = jwk.JWK.from_pem(pathlib.Path(pem).read_bytes())
    d = json.loads(key.export_private())
    d.update(kid=kid, alg=alg, key_ops=["sign"])
    return d


def token(base, client_id, pem, kid, alg):
    origin = base.rsplit("/fhir", 1)[0]
    aud = origin + "/auth/token"
    key = jwk.JWK(**private_jwk(pem, kid, alg))
    now = int(time.time())
    assertion = jwt.JWT(
        header={"alg": alg, "kid": kid, "typ": "JWT"},
        claims={"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "jti": str(uuid.uuid4())},
    )
    assertion.make_signed_token(key)
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "scope": "system/*.read",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion.serialize(),
    }).encode()
    req = urllib.request.Request(aud, data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    return json.load(urllib.request.urlopen(req))["access_token"]


def search_ids(base, tok, ty):
    ids, url = set(), f"{base}/{ty}?_count=1000"
    while url:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {tok}", "Accept": "application/fhir+json"})
        bundle = json.load(urllib.request.urlopen(req))
        ids |= {e["resource"]["id"] for e in bundle.get("entry", [])}
        url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
    return ids


def compare(base, client_id, pem, kid, alg, out):
    exported = {}
    files = sorted(f for f in pathlib.Path(out).glob("*.ndjson") if f.name[0].isupper())  # not log.ndjson
    if not files:
        sys.exit(f"smart-fetch wrote no NDJSON files in {out}")
    for f in files:
        ty = f.name.split(".")[0]
        for n, line in enumerate(f.read_text().splitlines(), 1):
            r = json.loads(line)
            if r.get("resourceType") != ty:
                sys.exit(f"{f.name}:{n}: resourceType {r.get('resourceType')} in a {ty} file")
            ids = exported.setdefault(ty, [])
            ids.append(r["id"])
    tok = token(base, client_id, pem, kid, alg)
    for ty, ids in sorted(exported.items()):
        if len(ids) != len(set(ids)):
            sys.exit(f"{ty}: a resource was exported twice")
        expected = search_ids(base, tok, ty)
        if set(ids) != expected:
            sys.exit(f"{ty}: export has {len(ids)} ids, FHIR search {len(expected)}; differing: {sorted(set(ids) ^ expected)[:5]}")
        print(f"  {ty}: {len(ids)} resources, the same as FHIR search")
    if not exported.get("Encounter"):
        sys.exit("no Encounter was exported (consents missing?)")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "jwks":
        print(json.dumps({"keys": [private_jwk(*args)]}))
    elif cmd == "compare":
        compare(*args)
    else:
        sys.exit(__doc__)
