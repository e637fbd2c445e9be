"""ams-keys: make and inspect the Ed25519 keys that sign updates, batches and requests (issue #13).

``ams-keys generate --out DIR --name NAME`` writes DIR/NAME.key (PEM, mode 0600) and prints the
public key line to paste into the other side's YAML (``server_public_keys`` on robots for the
base station's key, ``robot_public_keys: ["NAME=..."]`` on the server for a robot's key).
``ams-keys public FILE`` prints the public key of a private key file.
"""

from __future__ import annotations

import argparse
import sys

from ams_ros.core.security.signing import KeyFileError, SigningKey, generate_key_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ams-keys", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a new private key (mode 0600) and print its public key")
    g.add_argument("--out", required=True, help="folder for the key file")
    g.add_argument("--name", required=True, help="key name: the robot's device_id, or e.g. 'server'")
    pub = sub.add_parser("public", help="print the public key of a private key file")
    pub.add_argument("file")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "generate":
            path, key = generate_key_file(args.out, args.name)
            print(f"# wrote {path} (mode 0600, key id {key.key_id}); public key:", file=sys.stderr)
        else:
            key = SigningKey.load(args.file)
    except KeyFileError as exc:
        print(f"ams-keys: {exc}", file=sys.stderr)
        return 2
    print(key.public_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
