"""Contract loading, every check rule, imputation round trips and the Markdown page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sidecar._proto import inference_pb2
from sidecar.codecs import Tensor, decode_infer_request
from sidecar.contracts import (
    Contract,
    Violation,
    check_inputs,
    check_outputs,
    contract_markdown,
    impute,
    load_contract,
    parse_contract,
)
from sidecar.errors import ConfigError

CONTRACT: dict[str, Any] = {
    "name": "fraud-score",
    "version": "3",
    "description": "Scores card payments | fraud probability.",
    "inputs": [
        {"name": "payment", "datatype": "FP32", "shape": [-1, 3], "description": "payment row",
         "features": [
             {"name": "amount", "unit": "EUR", "range": [0, 10000], "description": "value"},
             {"name": "hour", "range": [0, 23], "nullable": True},
             {"index": 2, "name": "channel", "categories": [0, 1, 2]},
         ]},
        {"name": "country", "datatype": "BYTES", "shape": [-1, 1],
         "features": [{"index": 0, "categories": ["DE", "FR", "US"]}], "default": "US"},
        {"name": "segment", "datatype": "INT64", "shape": [-1], "default": 7},
    ],
    "outputs": [
        {"name": "probability", "datatype": "FP32", "shape": [-1, 1], "range": [0, 1]},
    ],
}


@pytest.fixture
def contract() -> Contract:
    return parse_contract(CONTRACT)


def _good_inputs(rows: int = 4) -> list[Tensor]:
    payment = [12.5, 3, 1] * rows
    return [
        Tensor("payment", "FP32", (rows, 3), payment, None),
        Tensor("country", "BYTES", (rows, 1), None, ["DE"] * rows),
        Tensor("segment", "INT64", (rows,), [7.0] * rows, None),
    ]


def _replace(tensors: list[Tensor], new: Tensor) -> list[Tensor]:
    return [new if t.name == new.name else t for t in tensors]


def _rules(violations: list[Violation]) -> list[tuple[str, str]]:
    return [(v.field, v.rule) for v in violations]


def test_clean_inputs_and_outputs_pass(contract: Contract) -> None:
    assert check_inputs(contract, _good_inputs()) == []
    out = [Tensor("probability", "FP32", (4, 1), [0.1, 0.0, 1.0, 0.5], None)]
    assert check_outputs(contract, out) == []


def test_missing_input_and_output(contract: Contract) -> None:
    tensors = [t for t in _good_inputs() if t.name != "segment"]
    violations = check_inputs(contract, tensors)
    assert _rules(violations) == [("segment", "missing")]
    assert "default" in violations[0].detail
    assert _rules(check_outputs(contract, [])) == [("probability", "missing")]


def test_datatype_and_shape(contract: Contract) -> None:
    bad = _replace(_good_inputs(), Tensor("payment", "FP64", (4, 3), [1.0, 2, 0] * 4, None))
    assert _rules(check_inputs(contract, bad)) == [("payment", "datatype")]
    bad = _replace(_good_inputs(), Tensor("payment", "FP32", (3, 4), [1.0, 2, 0, 0] * 3, None))
    violations = check_inputs(contract, bad)
    assert _rules(violations) == [("payment", "shape")]
    assert "[*, 3]" in violations[0].detail
    out = [Tensor("probability", "FP32", (4,), [0.1] * 4, None)]
    assert _rules(check_outputs(contract, out)) == [("probability", "shape")]


def test_range_category_and_null(contract: Contract) -> None:
    payment = [12.5, 3, 1, -4.0, 30, 1, 20000.0, float("nan"), 5, float("nan"), 2, 1]
    bad = _replace(_good_inputs(), Tensor("payment", "FP32", (4, 3), payment, None))
    bad = _replace(bad, Tensor("country", "BYTES", (4, 1), None, ["DE", "XX", "", "US"]))
    violations = check_inputs(contract, bad)
    assert _rules(violations) == [
        ("payment.amount", "null"),
        ("payment.amount", "range"),
        ("payment.hour", "range"),        # hour is nullable: the NaN is fine, 30 is not
        ("payment.channel", "category"),
        ("country[0]", "null"),
        ("country[0]", "category"),
    ]
    by_key = {(v.field, v.rule): v.detail for v in violations}
    assert by_key[("payment.amount", "range")].startswith("2 of 3 values outside [0, 10000]")
    assert "min -4" in by_key[("payment.amount", "range")]
    assert "XX" in by_key[("country[0]", "category")]


def test_nan_output(contract: Contract) -> None:
    out = [Tensor("probability", "FP32", (3, 1), [0.2, float("nan"), 1.5], None)]
    violations = check_outputs(contract, out)
    assert _rules(violations) == [("probability", "nan"), ("probability", "range")]
    allow = parse_contract({**CONTRACT, "outputs": [{**CONTRACT["outputs"][0],
                                                     "allow_nan": True}]})
    assert _rules(check_outputs(allow, out)) == [("probability", "range")]


def test_large_tensor_is_checked_vectorised(contract: Contract) -> None:
    rows = 200_000
    rng = np.random.default_rng(3)
    data = np.column_stack([rng.uniform(0, 100, rows), rng.integers(0, 24, rows),
                            rng.integers(0, 3, rows)]).astype(float)
    data[17, 0] = -1
    tensors = _replace(_good_inputs(rows), Tensor("payment", "FP32", (rows, 3),
                                                  data.ravel().tolist(), None))
    violations = check_inputs(contract, tensors)
    assert _rules(violations) == [("payment.amount", "range")]
    assert violations[0].detail.startswith("1 of 200000")


def _request(inputs: list[tuple[str, str, list[int], list[Any]]], *, raw: bool = False,
             parameters: dict[str, str] | None = None) -> bytes:
    request = inference_pb2.ModelInferRequest(model_name="fraud", id="req-1")
    for key, value in (parameters or {}).items():
        request.parameters[key].string_param = value
    for name, datatype, shape, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            if datatype == "BYTES":
                encoded = [v.encode() for v in values]
                request.raw_input_contents.append(
                    b"".join(len(e).to_bytes(4, "little") + e for e in encoded))
            else:
                dtype = {"FP32": "<f4", "INT64": "<i8"}[datatype]
                request.raw_input_contents.append(np.asarray(values, dtype=dtype).tobytes())
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(values)
        else:
            tensor.contents.fp32_contents.extend(values)
    request.outputs.add(name="probability")
    return request.SerializeToString()


@pytest.mark.parametrize("raw", [False, True])
def test_imputed_request_equals_the_client_built_one(contract: Contract, raw: bool) -> None:
    payment = ("payment", "FP32", [2, 3], [1.0, 2.0, 0.0, 3.0, 4.0, 1.0])
    sent = _request([payment], raw=raw, parameters={"tenant": "acme"})
    result = impute(contract, sent)
    assert result is not None
    imputed, fields = result
    assert fields == ["country", "segment"]
    expected = _request([payment, ("country", "BYTES", [2, 1], ["US", "US"]),
                         ("segment", "INT64", [2], [7, 7])], raw=raw,
                        parameters={"tenant": "acme"})
    assert imputed == expected
    decoded = {t.name: t for t in decode_infer_request(imputed)}
    assert decoded["country"].text == ["US", "US"]
    assert decoded["segment"].data == [7.0, 7.0]
    assert check_inputs(contract, list(decoded.values())) == []


def test_impute_nothing_missing_returns_none(contract: Contract) -> None:
    full = _request([("payment", "FP32", [1, 3], [1.0, 2.0, 0.0]),
                     ("country", "BYTES", [1, 1], ["DE"]), ("segment", "INT64", [1], [3])])
    assert impute(contract, full) is None
    no_defaults = parse_contract({**CONTRACT, "inputs": CONTRACT["inputs"][:1]})
    assert impute(no_defaults, _request([])) is None


def test_impute_from_feature_defaults() -> None:
    contract = parse_contract({"name": "c", "version": "1", "inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 2],
         "features": [{"name": "a", "default": 0.5}, {"name": "b", "default": -1}]},
    ]})
    result = impute(contract, _request([]))
    assert result is not None
    (tensor,) = decode_infer_request(result[0])
    assert (tensor.shape, tensor.data) == ((1, 2), [0.5, -1.0])


def test_bad_contract_file_names_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(CONTRACT))
    data["inputs"][0]["features"][1]["range"] = [5, 1]
    data["inputs"][1]["datatype"] = "STRING"
    data["outputs"][0]["colour"] = "red"
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_contract(path)
    problems = dict(info.value.problems)
    assert "range: low 5 is above high 1" in problems["inputs[0].features[1]"]
    assert "inputs[1].datatype" in problems
    assert problems["outputs[0].colour"] == "unknown key"
    assert str(path) in str(info.value)


def test_contract_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_contract(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_contract(tmp_path / "list.yaml")
    data = {**CONTRACT, "inputs": [{**CONTRACT["inputs"][2], "default": "seven"}]}
    with pytest.raises(ConfigError) as info:
        parse_contract(data)
    assert info.value.problems[0][0] == "inputs[0]"
    del data["version"]
    with pytest.raises(ConfigError) as info:
        parse_contract(data)
    assert ("version", "required") in info.value.problems


def test_load_contract_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(CONTRACT))
    contract = load_contract(path)
    assert contract.inputs[0].features[2].categories == (0.0, 1.0, 2.0)
    assert math.isclose(contract.inputs[0].features[0].range[1], 10000)  # type: ignore[index]


def test_markdown_page(contract: Contract) -> None:
    page = contract_markdown(contract)
    assert page.startswith("# fraud-score — contract version 3")
    assert "\nScores card payments | fraud probability.\n" in page
    assert "| `payment` | FP32 | [any, 3] | payment row | — | 3 | — |" in page
    assert "| 0 | `amount` | value | EUR | [0, 10000] | no | — |" in page
    assert "| 1 | `hour` | — | — | [0, 23] | yes | — |" in page
    assert "| 2 | `channel` | — | — | 0, 1, 2 | no | — |" in page
    assert '| `country` | BYTES | [any, 1] | — | — | 1 | "US" |' in page
    assert '| 0 | — | — | — | "DE", "FR", "US" | no | — |' in page
    assert "| `probability` | FP32 | [any, 1] | — | — | [0, 1] | no |" in page


def test_the_documented_example_is_a_valid_contract() -> None:
    page = Path(__file__).parents[2] / "docs" / "contracts.md"
    block = page.read_text(encoding="utf-8").split("```yaml\n", 1)[1].split("```", 1)[0]
    contract = parse_contract(yaml.safe_load(block))
    assert contract.inputs[1].default_row() == ("US",)
