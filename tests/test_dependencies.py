"""One dependency list per codec: the CDK app's Lambda image, the Cloud Functions source folder
and the Azure app install the same libraries for the same function, taken from pyproject.toml."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from onnx import TensorProto
from onnx_models import identity, save

from modelfn.deploy import azure, gcp
from modelfn.deploy.dependencies import name, requirements
from modelfn.deploy.plan import place
from modelfn.spec import FunctionSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


REMOTE = "https://example.invalid/model.onnx"


def function(root: Path, codec: str, source: str = REMOTE, hooks: str = "") -> FunctionSpec:
    """A function folder with only a spec (a text codec needs a tokenizer hook named)."""
    folder = root / f"{codec}-fn"
    folder.mkdir(parents=True)
    if codec == "text" and not hooks:
        hooks = '[hooks]\ntokenize = "hooks:tokenize"\n'
    (folder / "function.toml").write_text(
        f'name = "{codec}-fn"\n[model]\nsource = "{source}"\n[io]\ncodec = "{codec}"\n{hooks}'
    )
    return load_spec(folder)


def cdk_image_requirements(spec: FunctionSpec, staging: Path) -> list[str]:
    pytest.importorskip("constructs", reason="the CDK app needs constructs (pip install 'modelfn[cdk]')")
    sys.path.insert(0, str(ROOT / "cdk"))
    from modelfn_cdk.assets import stage_image

    return (stage_image(spec, staging) / "requirements.txt").read_text().split()


@pytest.mark.parametrize("codec", ["tensor", "records", "image", "text"])
def test_the_three_writers_install_the_same_libraries_for_a_codec(tmp_path: Path, codec: str) -> None:
    spec = function(tmp_path, codec)
    written = {
        "aws": cdk_image_requirements(spec, tmp_path / "staging"),
        "gcp": gcp.requirements(spec),
        "azure": azure.requirements(spec),
    }
    # each provider adds its own adapter's libraries; everything else is the same list
    beyond_the_adapter = {
        provider: sorted(set(lines) - set(requirements(spec, provider).handler)) for provider, lines in written.items()
    }
    assert beyond_the_adapter["aws"] == beyond_the_adapter["gcp"] == beyond_the_adapter["azure"]
    assert beyond_the_adapter["aws"] == sorted(["numpy>=1.26", "onnxruntime>=1.18", *EXTRAS.get(codec, [])])


@pytest.mark.parametrize("codec", ["image", "text"])
def test_a_codecs_libraries_are_its_pyproject_extra(tmp_path: Path, codec: str) -> None:
    spec = function(tmp_path, codec)
    for provider in ("aws", "gcp", "azure"):
        assert list(requirements(spec, provider).codec) == EXTRAS[codec]


def test_the_gcp_source_folder_lists_the_codec_library(tmp_path: Path) -> None:
    spec = function(tmp_path / "functions", "image", source="model.onnx")
    save(identity(TensorProto.FLOAT, ["batch", 2]), spec.folder / "model.onnx")
    gcp.write(spec, place(spec, "gcp"), tmp_path / "out")
    listed = (tmp_path / "out" / "image-fn" / "source" / "requirements.txt").read_text().split()
    assert listed == gcp.requirements(spec) and "pillow>=10" in listed


def test_a_remote_model_brings_its_client_where_the_platform_lacks_it(tmp_path: Path) -> None:
    on_s3 = function(tmp_path / "s3", "tensor", source="s3://bucket/model.onnx")
    on_gs = function(tmp_path / "gs", "tensor", source="gs://bucket/model.onnx")

    assert requirements(on_s3, "aws").model == ()  # every Lambda Python runtime ships boto3
    assert requirements(on_s3, "gcp").model == ("boto3>=1.34",)
    assert requirements(on_s3, "azure").model == ("boto3>=1.34",)
    assert requirements(on_gs, "aws").model == ("google-cloud-storage>=2.14",)
    assert requirements(on_gs, "gcp").model == ()  # the gcp adapter's own libraries include it
    assert "google-cloud-storage>=2.14" in requirements(on_gs, "gcp").handler


def test_hook_imports_are_added_once_on_every_provider(tmp_path: Path) -> None:
    spec = function(tmp_path, "image", hooks='[hooks]\npreprocess = "hooks:prepare"\n')
    (spec.folder / "hooks.py").write_text("import numpy\nfrom PIL import Image\nimport tokenizers\n")
    for provider in ("aws", "gcp", "azure"):
        needs = requirements(spec, provider)
        assert needs.codec == ("pillow>=10",) and needs.hooks == ("tokenizers",)
        assert len({name(r) for r in needs.all()}) == len(needs.all())


def test_requirement_names_are_normalised() -> None:
    written = ("Pillow>=10", "uvicorn[standard]>=0.29", "aws_xray_sdk", "numpy ; python_version>'3'")
    assert [name(r) for r in written] == ["pillow", "uvicorn", "aws-xray-sdk", "numpy"]


def test_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aws, gcp, azure"):
        requirements(function(tmp_path, "tensor"), "heroku")
