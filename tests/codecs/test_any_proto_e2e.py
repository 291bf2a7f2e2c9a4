"""Any proto through the sidecar: a reflection (or descriptor-set) codec records decoded
JSON, compared fields feed output/score/label, and field diffs find the changed field."""

from __future__ import annotations

import json

import duckdb
import pytest
from google.protobuf import descriptor_pb2

from analysis.field_diff import analyze_field_diff
from analysis.load import open_source
from tests.codecs.test_reflection import RANK, _Backend, file_set  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("file_set")


class _Renamed(_Backend):
    """Ranks the same as the primary but names another model."""

    async def _rank(self, request, context):
        response = await super()._rank(request, context)
        response.model = "bm25-v2"
        return response


@pytest.mark.parametrize("codec", ["reflection", "descriptor"])
async def test_any_proto_route(
    codec, file_set, tmp_path, start_sidecar, channel_to  # noqa: F811 - the imported fixture
) -> None:
    primary = _Backend(file_set, reflect=True)
    shadow2 = _Renamed(file_set, reflect=False)
    await primary.server.start()
    await shadow2.server.start()
    spec = "reflection"
    if codec == "descriptor":
        path = tmp_path / "rank.pb"
        path.write_bytes(file_set.SerializeToString())
        spec = f"descriptor:{path}"
    db = tmp_path / f"{codec}.duckdb"
    try:
        sc = await start_sidecar(
            {"p": f"127.0.0.1:{primary.port}", "s": f"127.0.0.1:{shadow2.port}"},
            [{"match": RANK, "primary": "p", "codec": spec,
              "compare_fields": ["hits[].score", "model"],
              "shadows": [{"backend": "s"}]}],
            db_path=db,
        )
        stub = channel_to(sc.port).unary_unary(RANK)
        for q in ("alpha beta", "gamma", "delta epsilon zeta"):
            req = primary.request_cls(query=q)
            answer = primary.response_cls.FromString(await stub(req.SerializeToString()))
            assert answer.model == "bm25"
        await sc.aclose()
    finally:
        await primary.server.stop(None)
        await shadow2.server.stop(None)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT role, response_json, output, label FROM calls WHERE role = 'primary' "
        "ORDER BY ts").fetchall()
    req_json = con.execute("SELECT request_json FROM requests ORDER BY ts").fetchall()
    con.close()
    assert json.loads(req_json[0][0])["query"] == "alpha beta"
    doc = json.loads(rows[0][1])
    assert [h["doc"] for h in doc["hits"]] == ["alpha", "beta"]
    assert rows[0][2] == [1.0, 0.5] and rows[0][3] == "bm25"
    report = analyze_field_diff(open_source(db=str(db))).to_dict()
    fields = {f["path"]: f for f in report["pairs"][0]["fields"]}
    assert fields["model"]["diff_rate"] == 1.0
    scores = [f for path, f in fields.items() if "score" in path]
    assert scores and all(f["diff_rate"] == 0.0 for f in scores)


def test_descriptor_codec_errors_name_the_route(tmp_path) -> None:
    from sidecar.config import parse_config
    from sidecar.errors import ConfigError
    from tests.conftest import sidecar_config

    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": RANK, "primary": "p", "codec": "descriptor:missing.pb"}])
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    assert info.value.problems[0][0] == "routes[0].codec"
    descriptor_pb2.FileDescriptorSet()
