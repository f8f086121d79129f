"""The PKCS#12 safe bags of a PFX with the attributes Java's ``PKCS12KeyStore`` reads.

``cryptography``'s ``load_pkcs12`` gives the key and certificates but not the bag attributes
Java decides by: a certificate bag is a *trusted* entry only with Oracle's
``trustedKeyUsage`` attribute and no ``localKeyId`` (that would pair it with a key). The
structures are pyasn1-modules' (RFC 7292 PFX/SafeBag, RFC 5652 ContentInfo, RFC 8018
PBES2); decryption is PBES2 with AES-CBC, what ``cryptography`` and Java 17 write. Anything
else (legacy PBE ciphers, BER indefinite lengths) answers None and the caller falls back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, univ
from pyasn1_modules import rfc5652, rfc7292, rfc8018

_OID_FRIENDLY_NAME = univ.ObjectIdentifier("1.2.840.113549.1.9.20")
_OID_LOCAL_KEY_ID = univ.ObjectIdentifier("1.2.840.113549.1.9.21")
#: Java's "trusted for any purpose" bag attribute (oracle_TrustedKeyUsage, PKCS12KeyStore.java).
_OID_JAVA_TRUSTED = univ.ObjectIdentifier("2.16.840.1.113894.746875.1.1")
_KEY_BAGS = (rfc7292.id_keyBag, rfc7292.id_pkcs8ShroudedKeyBag)
_PRF: dict[univ.ObjectIdentifier, Callable[[], hashes.HashAlgorithm]] = {
    rfc8018.id_hmacWithSHA1: hashes.SHA1,
    rfc8018.id_hmacWithSHA256: hashes.SHA256,
    rfc8018.id_hmacWithSHA384: hashes.SHA384,
    rfc8018.id_hmacWithSHA512: hashes.SHA512,
}
_AES_KEY_LEN = {
    univ.ObjectIdentifier("2.16.840.1.101.3.4.1.2"): 16,
    univ.ObjectIdentifier("2.16.840.1.101.3.4.1.22"): 24,
    univ.ObjectIdentifier("2.16.840.1.101.3.4.1.42"): 32,
}


@dataclass(frozen=True)
class Bag:
    """One SafeBag with the attributes Java's PKCS12KeyStore reads."""

    is_key: bool
    cert_der: bytes | None
    friendly_name: str | None
    local_key_id: bytes | None
    java_trusted: bool


def _decode(data: bytes, spec: Any) -> Any:
    value, rest = decoder.decode(data, asn1Spec=spec)
    if rest:
        raise ValueError("trailing data")
    return value


def _pbes2_decrypt(
    alg: rfc5652.ContentEncryptionAlgorithmIdentifier, ciphertext: bytes, password: bytes
) -> bytes:
    if alg["algorithm"] != rfc8018.id_PBES2:
        raise ValueError("not PBES2")
    params = _decode(bytes(alg["parameters"]), rfc8018.PBES2_params())
    kdf = _decode(bytes(params["keyDerivationFunc"]["parameters"]), rfc8018.PBKDF2_params())
    salt = bytes(kdf["salt"]["specified"])
    prf = _PRF[kdf["prf"]["algorithm"]] if kdf["prf"].isValue else hashes.SHA1
    scheme = params["encryptionScheme"]
    iv = bytes(_decode(bytes(scheme["parameters"]), univ.OctetString()))
    key = PBKDF2HMAC(prf(), _AES_KEY_LEN[scheme["algorithm"]], salt,
                     int(kdf["iterationCount"])).derive(password)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    return unpad.update(dec.update(ciphertext) + dec.finalize()) + unpad.finalize()


def pkcs12_bags(data: bytes, password: bytes) -> list[Bag] | None:
    """The safe bags of a PFX with their attributes, or None if the layout is not understood
    (or ``password`` does not decrypt it)."""
    try:
        pfx = _decode(data, rfc7292.PFX())
        auth = pfx["authSafe"]
        if auth["contentType"] != rfc5652.id_data:
            return None
        raw = bytes(_decode(bytes(auth["content"]), univ.OctetString()))
        bags: list[Bag] = []
        for ci in _decode(raw, rfc7292.AuthenticatedSafe()):
            if ci["contentType"] == rfc5652.id_data:
                safe = bytes(_decode(bytes(ci["content"]), univ.OctetString()))
            elif ci["contentType"] == rfc5652.id_encryptedData:
                eci = _decode(bytes(ci["content"]), rfc5652.EncryptedData())["encryptedContentInfo"]
                safe = _pbes2_decrypt(eci["contentEncryptionAlgorithm"],
                                      bytes(eci["encryptedContent"]), password)
            else:
                return None
            bags += [_bag(b) for b in _decode(safe, rfc7292.SafeContents())]
        return bags
    except (PyAsn1Error, ValueError, KeyError, TypeError):
        return None


def _bag(bag: rfc7292.SafeBag) -> Bag:
    present = bag["bagAttributes"].isValue  # the attribute set is OPTIONAL
    attrs = {a["attrType"]: list(a["attrValues"]) for a in bag["bagAttributes"]} if present else {}
    name = attrs.get(_OID_FRIENDLY_NAME)
    key_id = attrs.get(_OID_LOCAL_KEY_ID)
    cert_der = None
    if bag["bagId"] == rfc7292.id_certBag:
        cert_bag = _decode(bytes(bag["bagValue"]), rfc7292.CertBag())
        cert_der = bytes(_decode(bytes(cert_bag["certValue"]), univ.OctetString()))
    return Bag(
        is_key=bag["bagId"] in _KEY_BAGS,
        cert_der=cert_der,
        friendly_name=str(_decode(bytes(name[0]), char.BMPString())) if name else None,
        local_key_id=bytes(_decode(bytes(key_id[0]), univ.OctetString())) if key_id else None,
        java_trusted=_OID_JAVA_TRUSTED in attrs,
    )
