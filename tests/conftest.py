import os
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pistol"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write the user's cache, except that the dequantized SmolLM2 may be reused."""
    if "UNLEARNBENCH_CACHE" not in os.environ:
        os.environ["UNLEARNBENCH_CACHE"] = str(tmp_path_factory.mktemp("ubcache"))
    yield


@pytest.fixture(scope="session")
def mini():
    from pistol_data import generate

    return generate("pistol-mini", 0)


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference/pistol is not present")
    return REFERENCE


@pytest.fixture(scope="session")
def grid_config():
    """``make(cfg_dict, folder)``: the dict written to ``folder/c.yaml`` and loaded as a run config,
    as ``unlearnbench run`` would load it."""
    import yaml

    from unlearnbench.config import load_config

    def make(cfg: dict, folder: Path):
        p = Path(folder) / "c.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return load_config(p)

    return make
