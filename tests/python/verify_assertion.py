"""Verifies a Portcullis identity assertion as an upstream would, with PyJWT alone.

Usage: verify_assertion.py JWKS_FILE TOKEN AUDIENCE ISSUER

Prints the verified claims as JSON and exits 0, or prints why it refused and exits 1.
The tests run it (tests/integration/assertion.rs); docs/identity-assertion.md shows the same.
"""

import json
import sys

import jwt


def verify(jwks: dict, token: str, audience: str, issuer: str) -> dict:
    kid = jwt.get_unverified_header(token).get("kid")
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    if kid not in keys:
        raise jwt.InvalidTokenError(f"no published key {kid!r}")
    key = keys[kid]
    return jwt.decode(
        token,
        key=key,
        # The key decides the algorithm: never the token's header alone.
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},
    )


def main() -> int:
    jwks_file, token, audience, issuer = sys.argv[1:5]
    with open(jwks_file, encoding="utf-8") as file:
        jwks = json.load(file)
    try:
        claims = verify(jwks, token, audience, issuer)
    except jwt.PyJWTError as error:
        print(f"refused: {type(error).__name__}: {error}")
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
