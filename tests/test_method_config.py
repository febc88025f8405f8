"""Each method's config section (tfkd.method_config) is the one its class uses, and reading and
checking a config never imports TensorFlow."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_every_method_class_uses_its_registered_section():
    from tfkd.method_config import METHOD_CONFIGS
    from tfkd.registry import METHODS

    import tfkd.methods  # noqa: F401  (registers the method classes)

    assert METHODS.names() == METHOD_CONFIGS.names()
    for name in METHODS.names():
        cls, section = METHODS.get(name), METHOD_CONFIGS.get(name)
        assert cls.config_section is section, name
        assert cls.task == section.task, name
        assert cls.default_config().to_dict() == section.default_config().to_dict(), name


@pytest.mark.parametrize("name,field,value", [("self_distill", "alpha", 1.5), ("metadistiller", "meta_every_steps", 0),
                                              ("metadistiller", "meta_batch_size", -1),
                                              ("metadistiller", "fusion_norm", None),
                                              ("kd", "temperature", 0.0), ("dist", "gamma", -1.0),
                                              ("progressive", "direction", "up")])
def test_a_method_class_rejects_what_its_section_rejects(name, field, value):
    from tfkd.errors import ConfigError
    from tfkd.method_config import METHOD_CONFIGS
    from tfkd.registry import METHODS

    import tfkd.methods  # noqa: F401

    for owner in (METHOD_CONFIGS.get(name), METHODS.get(name)):
        cfg = owner.default_config()
        cfg.teacher = "/some/run" if "teacher" in cfg else None
        cfg[field] = value
        with pytest.raises(ConfigError, match=field):
            owner.check_config(cfg)


def test_loading_and_resolving_a_config_imports_no_tensorflow():
    script = ("import sys\n"
              "from tfkd import config\n"
              "for method in ('metadistiller', 'progressive', 'kd'):\n"
              "    c = config.base_config()\n"
              "    c.fewshot.features_dir = '/features'\n"
              "    c.kd.teacher = '/teacher'\n"
              "    config.resolve(c, method=method)\n"
              "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_shipped_config_file_loads_and_passes_validation():
    """configs/*.py, including those built on another (tfkd.config.sibling_config), resolve for
    their own method and validate: a broken file would otherwise surface hours into a benchmark."""
    import glob
    import os

    from tfkd.config import resolve, sibling_config, validate

    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
    assert len(paths) >= 12
    for path in paths:
        config = resolve(sibling_config(path, os.path.basename(path)[:-3]))
        validate(config)
    small = sibling_config(os.path.join(REPO, "configs", "x.py"), "bench_fashion_mnist_small_data")
    converge = sibling_config(os.path.join(REPO, "configs", "x.py"), "bench_fashion_mnist_converge")
    # The small-data regime differs from the convergent one in its data and length only.
    assert (small.data.max_train_examples, small.train.epochs) == (2000, 100)
    assert small.model.to_dict() == converge.model.to_dict()
    assert small.metadistiller.to_dict() == converge.metadistiller.to_dict()
