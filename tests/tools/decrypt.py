#!/usr/bin/env python3
"""Decrypt a mesbak backup file without mesbak.

An independent implementation of FORMAT.md (format versions 1 and 2), written
from that document and not from the Rust code, so that a test can hold the two to
each other and a plant can recover its data with nothing but Python 3 and the
`cryptography` package (Debian: apt-get install python3-cryptography).

    decrypt.py [--key-file K] INPUT OUTPUT

The key comes from K, else from the environment variable
BACKUP_ENCRYPTION_KEY. INPUT and OUTPUT may be "-" for stdin and stdout. The
file is processed one chunk at a time and each chunk is written out only after
its tag verified. OUTPUT is written under a temporary name and renamed only
when the whole file authenticated, so a failure never leaves a file that looks
complete. Exit status 0 on success, 1 on any failure (with a message), 2 on
bad usage.
"""

import argparse
import hashlib
import hmac
import os
import sys
import tempfile
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"\x89MESBAK\n"
# Per format version (FORMAT.md 2): header length, KDF id, offsets of the
# PBKDF2 salt, of the file salt (version 2 only) and of the cipher id; the
# chunk size, key check and CRC follow the cipher id in both.
LAYOUT = {
    1: {"length": 55, "kdf": 1, "salt": 14, "file_salt": None, "cipher": 30},
    2: {"length": 71, "kdf": 2, "salt": 14, "file_salt": 30, "cipher": 46},
}
FILE_KEY_INFO = b"mesbak v2 file key"
TAG_LEN = 16
MAX_ITERATIONS = 100_000_000
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_KEY_FILE_LEN = 4096
# Trailing bytes that are not part of the key (FORMAT.md 3). Not 0x0B, so not
# bytes.rstrip() without arguments.
KEY_WHITESPACE = b" \t\n\r\f"
ENV_KEY = "BACKUP_ENCRYPTION_KEY"


class Failure(Exception):
    """A reason to stop, worded for the person running the tool."""


def read_up_to(stream, size):
    """Reads until `size` bytes arrived or the stream ended."""
    parts, got = [], 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def load_key(key_file):
    if key_file is not None:
        with open(key_file, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                print(
                    f"decrypt.py: warning: key file {key_file} can be read or written "
                    f"by other users (mode {mode & 0o7777:04o}); run chmod 600 {key_file}",
                    file=sys.stderr,
                )
            secret = f.read(MAX_KEY_FILE_LEN + 1)
        if len(secret) > MAX_KEY_FILE_LEN:
            raise Failure(f"{key_file} is larger than {MAX_KEY_FILE_LEN} bytes, so it is not a key file")
    elif ENV_KEY in os.environ:
        secret = os.environb[ENV_KEY.encode()]
    else:
        raise Failure(f"no key: give --key-file K or set {ENV_KEY}")
    secret = secret.rstrip(KEY_WHITESPACE)
    if not secret:
        raise Failure("the key is empty")
    return secret


def read_header(stream):
    """Reads and checks the header (FORMAT.md 2), in the order given there.
    Returns its bytes and fields."""
    header = read_up_to(stream, len(MAGIC))
    if header != MAGIC:
        raise Failure("not a mesbak backup file (it does not start with the mesbak header)")
    header += read_up_to(stream, 1)
    if len(header) < 9:
        raise Failure("truncated: the file ends inside its header")
    layout = LAYOUT.get(header[8])
    if layout is None:
        raise Failure(f"unsupported format version {header[8]}; this tool reads versions 1 and 2")
    length = layout["length"]
    header += read_up_to(stream, length - len(header))
    if len(header) < length:
        raise Failure(f"truncated: the file ends inside its header (at byte {len(header)})")
    if zlib.crc32(header[:length - 4]) != int.from_bytes(header[length - 4:], "big"):
        raise Failure("damaged header: its CRC-32 does not match")
    cipher = layout["cipher"]
    if header[9] != layout["kdf"]:
        raise Failure(f"unsupported key derivation function id {header[9]}")
    if header[cipher] != 1:
        raise Failure(f"unsupported cipher id {header[cipher]}")
    iterations = int.from_bytes(header[10:14], "big")
    chunk_size = int.from_bytes(header[cipher + 1:cipher + 5], "big")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise Failure(f"damaged header: KDF iteration count {iterations} out of range")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise Failure(f"damaged header: chunk size {chunk_size} out of range")
    file_salt = layout["file_salt"]
    return {
        "bytes": header,
        "iterations": iterations,
        "salt": header[14:30],
        "file_salt": None if file_salt is None else header[file_salt:file_salt + 16],
        "chunk_size": chunk_size,
        "key_check": header[cipher + 5:cipher + 21],
    }


def file_key(key, header):
    """The file's AES key (FORMAT.md 3), after checking the key check."""
    derived = hashlib.pbkdf2_hmac("sha256", key, header["salt"], header["iterations"], 48)
    if not hmac.compare_digest(derived[32:48], header["key_check"]):
        raise Failure("wrong key: this backup was encrypted with a different key")
    if header["file_salt"] is None:
        return derived[:32]
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=header["file_salt"], info=FILE_KEY_INFO)
    return hkdf.derive(derived[:32])


def nonce(index, final):
    return index.to_bytes(8, "big") + b"\x00\x00\x00" + (b"\x01" if final else b"\x00")


def authenticates(aead, index, final, chunk, header):
    try:
        aead.decrypt(nonce(index, final), chunk, header)
        return True
    except InvalidTag:
        return False


def decrypt_stream(stream, key, open_output):
    """Checks the header and key, then calls open_output() and writes every
    authenticated chunk to what it returns."""
    fields = read_header(stream)
    aead = AESGCM(file_key(key, fields))
    header = fields["bytes"]
    sealed_len = fields["chunk_size"] + TAG_LEN

    out = open_output()
    index, offset, carried = 0, len(header), b""
    while True:
        chunk = carried + read_up_to(stream, sealed_len - len(carried))
        if len(chunk) == sealed_len:
            # A full chunk is the final one only if nothing follows it.
            carried = read_up_to(stream, 1)
            final = not carried
        else:
            carried, final = b"", True
        if len(chunk) < TAG_LEN:
            raise Failure(f"truncated: the file ends at byte {offset + len(chunk)} before its final chunk")
        try:
            plaintext = aead.decrypt(nonce(index, final), chunk, header)
        except InvalidTag:
            end = offset + len(chunk)
            if final and authenticates(aead, index, False, chunk, header):
                raise Failure(f"truncated: the file ends at byte {end} before its final chunk") from None
            if not final and authenticates(aead, index, True, chunk, header):
                raise Failure(f"trailing data: unexpected bytes after the final chunk (from byte {end})") from None
            raise Failure(
                f"damaged: chunk {index} (byte offset {offset}) failed authentication; "
                "the file is corrupt or was tampered with"
            ) from None
        out.write(plaintext)
        if final:
            return
        index += 1
        offset += len(chunk)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Decrypt a mesbak backup file (see FORMAT.md).")
    parser.add_argument("--key-file", metavar="K", help=f"key file (default: ${ENV_KEY})")
    parser.add_argument("input", metavar="INPUT", help='encrypted backup, or "-" for stdin')
    parser.add_argument("output", metavar="OUTPUT", help='where to write the payload, or "-" for stdout')
    args = parser.parse_args(argv)

    temp = None
    try:
        key = load_key(args.key_file)
        if args.output != "-" and os.path.lexists(args.output):
            raise Failure(f"{args.output} already exists; remove it or choose another output")

        def open_output():
            nonlocal temp
            if args.output == "-":
                return sys.stdout.buffer
            folder = os.path.dirname(os.path.abspath(args.output))
            name = os.path.basename(args.output)
            # Created with mode 0600: a database payload holds role passwords.
            temp = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".part", delete=False)
            return temp

        if args.input == "-":
            decrypt_stream(sys.stdin.buffer, key, open_output)
        else:
            with open(args.input, "rb") as stream:
                decrypt_stream(stream, key, open_output)

        if temp is not None:
            temp.flush()
            os.fsync(temp.fileno())
            temp.close()
            os.rename(temp.name, args.output)
            temp = None
        else:
            sys.stdout.buffer.flush()
        return 0
    except (Failure, OSError) as err:
        print(f"decrypt.py: {args.input}: {err}", file=sys.stderr)
        return 1
    finally:
        if temp is not None:
            temp.close()
            os.unlink(temp.name)


if __name__ == "__main__":
    sys.exit(main())
