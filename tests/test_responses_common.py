"""The reasoning-signature round trip shared by the Responses translators."""
from clasp.translate.responses_common import decode_reasoning_signature, encode_reasoning_signature


def test_signature_round_trips_id_and_encrypted_content():
    sig = encode_reasoning_signature("rs_123", "gAAAA+/=enc\u00e9")
    assert sig.startswith("clasp.r1.")
    assert "=" not in sig and "+" not in sig and "/" not in sig
    assert decode_reasoning_signature(sig) == ("rs_123", "gAAAA+/=enc\u00e9")


def test_foreign_and_damaged_signatures_decode_to_none():
    good = encode_reasoning_signature("rs_1", "x")
    for sig in [None, 5, "", "EqQBCkgIAhABGAIiQ...", "clasp.r1.", "clasp.r1.!!!!",
                "clasp.r1.bnVsbA", good[:-3], "clasp.r2." + good[9:],
                encode_reasoning_signature("rs_1", "")]:
        assert decode_reasoning_signature(sig) is None, sig
