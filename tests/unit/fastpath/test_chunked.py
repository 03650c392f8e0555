"""The incremental chunked-body decoder (fastpath/parser.pyx, ChunkedDecoder; RFC 9112 7.1)."""
import pytest
from hypothesis import given, settings, strategies as st

from fastpath import parser as P

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"


def decode_pieces(pieces):
    """Feeds `pieces` to one decoder until it is done or fails.

    Returns (decoded bytes, absolute end of the body or None when not done, decoder);
    decoded is None on an error.
    """
    dec = P.ChunkedDecoder()
    out = []
    consumed = 0
    for piece in pieces:
        data, pos = dec.feed_bytes(piece)
        if pos == -1:
            assert data is None
            return None, None, dec
        out.append(data)
        if dec.done:
            return b"".join(out), consumed + pos, dec
        assert pos == len(piece), "stopped early without being done"
        consumed += len(piece)
    return b"".join(out), None, dec


def bytewise(data):
    return [data[i:i + 1] for i in range(len(data))]


def assert_decodes(body, expected, trailing=NEXT_REQUEST):
    """`body` decodes to `expected` and ends exactly at its last byte, in one piece, byte
    by byte and split in two anywhere."""
    data = body + trailing
    splits = [[data], bytewise(data)] + [[data[:k], data[k:]] for k in range(1, len(data))]
    for pieces in splits:
        decoded, end, dec = decode_pieces(pieces)
        assert decoded == expected, (pieces[:2], dec.error_reason_text)
        assert end == len(body), pieces[:2]
        assert dec.done and dec.error_reason_text is None


def assert_fails(body, reason_word=None):
    """`body` is a framing error, whichever way it is split."""
    for pieces in ([body], bytewise(body)):
        decoded, end, dec = decode_pieces(pieces)
        assert decoded is None, f"accepted {body!r}"
        assert dec.error_status == 400
        assert dec.error_reason_text
        if reason_word:
            assert reason_word in dec.error_reason_text, dec.error_reason_text


# -- valid bodies ---------------------------------------------------------------------------

def test_single_chunk():
    assert_decodes(b"5\r\nhello\r\n0\r\n\r\n", b"hello")


def test_several_chunks():
    assert_decodes(b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n", b"hello world")


def test_empty_body():
    assert_decodes(b"0\r\n\r\n", b"")


@pytest.mark.parametrize("size", [b"a", b"A", b"0a", b"00A", b"000000000000000a"[1:]],
                         ids=["lower", "upper", "leading-zero", "leading-zeros", "15-digits"])
def test_hex_sizes(size):
    assert_decodes(size + b"\r\n0123456789\r\n0\r\n\r\n", b"0123456789")


def test_chunk_data_may_hold_any_bytes():
    data = bytes(range(256))
    assert_decodes(b"100\r\n" + data + b"\r\n0\r\n\r\n", data)


def test_chunk_data_containing_crlf_and_chunk_syntax():
    data = b"\r\n0\r\n\r\n"
    assert_decodes(b"7\r\n" + data + b"\r\n0\r\n\r\n", data)


@pytest.mark.parametrize("ext", [b";name", b";name=value", b';name="quoted; value"',
                                 b";a;b=c;d", b" ;a", b"\t;a=b", b"; a = b", b";x=\x80\xff"])
def test_chunk_extensions_ignored(ext):
    assert_decodes(b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n", b"hello")


def test_whitespace_after_size_tolerated():
    assert_decodes(b"5 \r\nhello\r\n0\t\r\n\r\n", b"hello")


@pytest.mark.parametrize("size_line", [b"5  \t", b"5 \t ;a=b", b"5\t\t;a"])
def test_whitespace_after_size_before_extension_or_line_end_tolerated(size_line):
    assert_decodes(size_line + b"\r\nhello\r\n0\r\n\r\n", b"hello")


def test_long_extension_within_limit_accepted():
    assert_decodes(b"5;" + b"e" * 4000 + b"\r\nhello\r\n0\r\n\r\n", b"hello")


@pytest.mark.parametrize("trailers", [
    b"X-Checksum: abc\r\n",
    b"A: 1\r\nB: 2\r\nC:\r\n",
    b"Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
    b"X-Tab:\tv\t\r\n",
])
def test_trailers_consumed(trailers):
    assert_decodes(b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n", b"hello")


# -- split reads ----------------------------------------------------------------------------

def test_decoded_bytes_come_out_as_they_arrive():
    dec = P.ChunkedDecoder()
    assert dec.feed_bytes(b"a\r\n01234") == (b"01234", 8)
    assert not dec.done
    assert dec.feed_bytes(b"56789\r\n") == (b"56789", 7)
    assert dec.feed_bytes(b"0\r\n") == (b"", 3)
    assert not dec.done
    assert dec.feed_bytes(b"\r\nrest") == (b"", 2)
    assert dec.done


def test_large_chunk_size_only_waits_for_data():
    dec = P.ChunkedDecoder()
    decoded, pos = dec.feed_bytes(b"fffffffffffffff\r\n" + b"x" * 1000)
    assert decoded == b"x" * 1000 and pos == 1017 and not dec.done


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
       upper=st.booleans(),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_any_split_decodes_the_same(chunks, upper, cuts):
    fmt = "%X" if upper else "%x"
    body = b"".join((fmt % len(c)).encode() + b"\r\n" + c + b"\r\n" for c in chunks)
    body += b"0\r\nT: v\r\n\r\n"
    data = body + NEXT_REQUEST
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    decoded, end, dec = decode_pieces(pieces)
    assert decoded == b"".join(chunks)
    assert end == len(body)


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"g\r\nhello\r\n0\r\n\r\n", b"\r\n\r\n", b"-5\r\nhello\r\n",
                                  b"0x5\r\nhello\r\n", b" 5\r\nhello\r\n", b";a\r\n",
                                  b"5g\r\nhello\r\n", b"+5\r\nhello\r\n"],
                         ids=["non-hex", "empty", "negative", "0x", "leading-space",
                              "ext-only", "hex-then-junk", "plus"])
def test_bad_chunk_size_rejected(body):
    assert_fails(body, "chunk size")


@pytest.mark.parametrize("body", [b"5\r\nhelloX\r\n0\r\n\r\n", b"5\r\nhello0\r\n\r\n",
                                  b"5\r\nhello\n0\r\n\r\n", b"5\r\nhello\rX0\r\n\r\n",
                                  b"3\r\nhello\r\n0\r\n\r\n"],
                         ids=["junk", "next-size", "bare-lf", "bare-cr", "data-longer-than-size"])
def test_missing_crlf_after_chunk_data_rejected(body):
    assert_fails(body, "CRLF after chunk data")


@pytest.mark.parametrize("body", [b"5\nhello\r\n0\r\n\r\n", b"5;a=b\nhello\r\n0\r\n\r\n",
                                  b"5 \nhello\r\n0\r\n\r\n", b"0\n\r\n"],
                         ids=["after-size", "after-extension", "after-whitespace", "last-chunk"])
def test_bare_lf_in_size_line_rejected(body):
    assert_fails(body)


def test_bare_cr_in_size_line_rejected():
    assert_fails(b"5\rhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("body", [b"0\r\n\n", b"0\r\n\rX", b"0\r\nX: y\n\r\n", b"0\r\nX: y\rZ\r\n\r\n"],
                         ids=["final-bare-lf", "final-bare-cr", "trailer-bare-lf", "trailer-bare-cr"])
def test_bad_line_endings_after_last_chunk_rejected(body):
    assert_fails(body)


@pytest.mark.parametrize("digits", [b"1" + b"0" * 15, b"0" * 15 + b"1", b"f" * 16, b"1" * 40])
def test_chunk_size_over_15_hex_digits_rejected(digits):
    assert_fails(digits + b"\r\n", "too large")


def test_chunk_size_of_15_hex_digits_accepted():
    assert_decodes(b"0" * 14 + b"5\r\nhello\r\n0\r\n\r\n", b"hello")


@pytest.mark.parametrize("n", [5000, 100000])
def test_too_long_extension_line_rejected(n):
    assert_fails(b"5;" + b"e" * n + b"\r\nhello\r\n0\r\n\r\n", "extension too long")


@pytest.mark.parametrize("ext", [b";a=\x00", b";a\x01", b";\x7f", b";a=b\x0bc"])
def test_control_bytes_in_extension_rejected(ext):
    assert_fails(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")


def test_obs_fold_in_trailer_rejected():
    assert_fails(b"0\r\nX: y\r\n  z\r\n\r\n", "fold")


@pytest.mark.parametrize("line", [b"(x): y", b"X: a\x00b", b"X: a\x7f", b"\x80: y", b":y"])
def test_invalid_trailer_line_rejected(line):
    assert_fails(b"0\r\n" + line + b"\r\n\r\n")


def test_too_large_trailer_section_rejected():
    assert_fails(b"0\r\n" + b"X-T: " + b"t" * 9000 + b"\r\n\r\n", "too large")


@pytest.mark.parametrize("size_line", [b"5 6", b"5 x", b"5\tz=1"])
def test_junk_after_chunk_size_rejected(size_line):
    assert_fails(size_line + b"\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("body", [b"5\r\nhello\r\n0 x\r\n\r\n", b"5 \x80\r\nhello\r\n0\r\n\r\n",
                                  b"5 =\r\nhello\r\n0\r\n\r\n"],
                         ids=["last-chunk", "obs-text", "equals"])
def test_junk_after_whitespace_after_chunk_size_rejected(body):
    assert_fails(body, "after chunk size")


def test_too_long_whitespace_after_chunk_size_rejected():
    assert_fails(b"5" + b" " * 5000 + b"\r\nhello\r\n0\r\n\r\n", "too long")


@pytest.mark.parametrize("line", [b"NoColon", b"X : y", b"X\t: y"])
def test_malformed_trailer_field_line_rejected(line):
    assert_fails(b"0\r\n" + line + b"\r\n\r\n")


@pytest.mark.parametrize("line", [b"X\x80: y", b"X(: y", b"X-T\r"])
def test_trailer_field_name_with_a_non_token_byte_rejected(line):
    assert_fails(b"0\r\n" + line + b"\r\n\r\n", "trailer")


@pytest.mark.parametrize("line", [b"X:y", b"X-Empty:", b"X: a:b:c", b"x-t: \x80\xff"])
def test_well_formed_trailer_field_lines_accepted(line):
    assert_decodes(b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n", b"hello")


# -- where decoding stops -------------------------------------------------------------------

def test_position_stops_right_after_the_final_crlf():
    body = b"5\r\nhello\r\n0\r\n\r\n"
    dec = P.ChunkedDecoder()
    decoded, pos = dec.feed_bytes(body + NEXT_REQUEST)
    assert decoded == b"hello"
    assert pos == len(body)
    assert dec.done


def test_position_after_trailers_and_within_the_last_piece():
    body = b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    dec = P.ChunkedDecoder()
    assert dec.feed_bytes(body[:9]) == (b"ab", 9)
    decoded, pos = dec.feed_bytes(body[9:] + NEXT_REQUEST)
    assert decoded == b"c"
    assert pos == len(body) - 9
    assert dec.done


def test_next_request_bytes_are_not_decoded_even_if_they_look_like_chunks():
    body = b"0\r\n\r\n"
    dec = P.ChunkedDecoder()
    assert dec.feed_bytes(body + b"5\r\nhello\r\n0\r\n\r\n") == (b"", len(body))
    assert dec.done


def test_not_done_until_the_final_crlf():
    dec = P.ChunkedDecoder()
    body = b"5\r\nhello\r\n0\r\nT: v\r\n\r\n"
    for i in range(len(body) - 1):
        dec.feed_bytes(body[i:i + 1])
        assert not dec.done, i
    assert dec.feed_bytes(body[-1:]) == (b"", 1)
    assert dec.done
