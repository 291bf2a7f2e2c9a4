"""What of the caller's metadata goes on to a backend, and what comes back to the caller."""

from __future__ import annotations

from sidecar.server.forwarding import forward_metadata, reply_metadata


def test_hop_by_hop_and_pseudo_headers_stay_behind() -> None:
    incoming = (("x-user", "42"), ("te", "trailers"), ("user-agent", "grpc-python"),
                ("grpc-timeout", "5S"), ("content-type", "application/grpc"), (":authority", "h"),
                ("grpc-accept-encoding", "gzip"), ("x-bin", b"\x00\x01"))
    out, rid = forward_metadata(incoming)
    assert out[:2] == (("x-user", "42"), ("x-bin", b"\x00\x01"))
    assert out[2] == ("x-request-id", rid) and len(rid) == 32 and int(rid, 16) >= 0


def test_request_id_is_honoured_once_and_bounded() -> None:
    out, rid = forward_metadata((("x-request-id", "abc"), ("x-request-id", "second")))
    assert rid == "abc" and out == (("x-request-id", "abc"),)
    _, long_rid = forward_metadata((("x-request-id", "r" * 500),))
    assert long_rid == "r" * 128
    _, fresh = forward_metadata((("x-request-id", ""),))  # empty: a new one
    assert len(fresh) == 32 and fresh != forward_metadata(())[1]


def test_trace_keys_go_to_the_carrier_when_the_sidecar_traces() -> None:
    incoming = (("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"), ("baggage", "k=v"),
                ("x-user", "1"))
    carrier: dict[str, str] = {}
    out, _ = forward_metadata(incoming, carrier)
    assert carrier == {"traceparent": incoming[0][1], "baggage": "k=v"}
    assert [k for k, _ in out] == ["x-user", "x-request-id"]
    untouched, _ = forward_metadata(incoming)  # not tracing: they travel on unchanged
    assert [k for k, _ in untouched] == ["traceparent", "baggage", "x-user", "x-request-id"]


def test_reply_metadata_drops_transport_keys_and_the_backends_request_id() -> None:
    md = (("x-model", "v8"), ("grpc-status", "0"), ("x-request-id", "backend-own"),
          ("content-type", "application/grpc"))
    assert reply_metadata(md) == (("x-model", "v8"),)


def test_made_request_ids_are_unique_and_differ_in_a_forked_worker() -> None:
    """Issue 18: request ids come from a generator seeded once per process (no syscall per
    call); a forked child must not repeat the parent's sequence."""
    import os
    import random

    from sidecar.server import forwarding

    ids = {forwarding.new_request_id() for _ in range(20_000)}
    assert len(ids) == 20_000 and all(len(i) == 32 for i in ids)
    # The parent's next id, computed on a copy of the generator's state.
    twin = random.Random()
    twin.setstate(forwarding._IDS.getstate())
    parents_next = twin.randbytes(16).hex()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without pytest's teardown
        os.write(write, forwarding.new_request_id().encode())
        os._exit(0)
    os.close(write)
    childs_first = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(childs_first) == 32 and childs_first != parents_next
    assert forwarding.new_request_id() == parents_next
