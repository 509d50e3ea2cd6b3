"""Start-up of every Hydra entry point: the command line's overrides are composed and validated before Hydra makes a
run folder and before any model is loaded. A bad override exits with status 2 and one line that names the key and
the valid values or keys; nothing is written.

    if __name__ == "__main__":
        launch("ptq", run)   # checks the command line (exit 2 on a bad override), then Hydra runs run(settings)
"""

from __future__ import annotations

import re
import sys

from lords_pipelines import CONF

_HYDRA_FLAGS = {"-m", "--multirun"}


def _variants(overrides: list[str]) -> list[list[str]]:
    """Each sweep value of each ``key=a,b`` override once, the other overrides at their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    first = [
        o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
        for o in parsed
    ]
    variants = [first]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            for value in list(o.sweep_string_iterator())[1:]:
                variants.append(first[:i] + [f"{o.get_key_element()}={value}"] + first[i + 1 :])
    return variants


def _one_line(error: Exception, overrides: list[str], config_name: str) -> str:
    text = str(error)
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, _, option = missing.group(1).rpartition("/")
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml")) if group else []
        return f"{group}={option}: no such option (available: {', '.join(options)})"
    key = re.search(r"Could not (?:override|append to config)[^']*'([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if key:
        name = key.group(1)
        given = next((o for o in overrides if o.lstrip("+~").split("=")[0].endswith(name)), name)
        return f"{given}: unknown key{_known_keys(config_name, name)}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _known_keys(config_name: str, key: str) -> str:
    from omegaconf import OmegaConf

    parent = key.rpartition(".")[0]
    try:
        node = OmegaConf.select(compose(config_name, []), parent) if parent else compose(config_name, [])
        return f" (known: {', '.join(sorted(k for k in node.keys() if k != '_target_'))})"
    except Exception:  # the hint is a courtesy: never let it hide the error itself
        return ""


def compose(config_name: str, overrides: list[str]):
    """``conf/<config_name>.yaml`` composed with ``overrides``, inside a Hydra job (a table's row composing its
    stage's config: Hydra is already initialized on ``conf/``) or outside one."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def check_overrides(config_name: str, overrides: list[str], validate=None) -> str | None:
    """None when every variant of ``overrides`` composes and validates (``validate(cfg)``: the stages' settings by
    default), else the one-line reason."""
    from lords.errors import LordsError
    from lords_pipelines.stages.settings import settings_from_cfg

    overrides = [o for o in overrides if not o.startswith("hydra.")]
    try:
        variants = _variants(overrides)
    except Exception as e:  # the override grammar itself
        return _one_line(e, overrides, config_name)
    for variant in variants:
        if validate is None and not any(o.startswith("out_dir=") for o in variant):
            variant = [*variant, "out_dir=unused"]  # Hydra's run folder does not exist yet
        try:
            (validate or settings_from_cfg)(compose(config_name, variant))
        except LordsError as e:
            return str(e)
        except Exception as e:  # Hydra's and OmegaConf's composition errors
            return _one_line(e, variant, config_name)
    return None


def check_command_line(config_name: str, argv: list[str] | None = None, validate=None) -> None:
    """Exit 2 with ``config error: <one line>`` when the command line's overrides do not validate."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") and a not in _HYDRA_FLAGS for a in argv):
        return  # --help, --cfg, --info ...: Hydra's own
    reason = check_overrides(config_name, [a for a in argv if a not in _HYDRA_FLAGS], validate)
    if reason is not None:
        print(f"config error: {reason}", file=sys.stderr)
        raise SystemExit(2)


def launch(config_name: str, run) -> None:
    """The entry point of a stage: check the command line, then let Hydra compose ``conf/<config_name>.yaml`` (runs,
    sweeps, callbacks) and call ``run`` with the validated settings of each job."""
    from lords_pipelines.stages.settings import settings_or_exit

    check_command_line(config_name)

    def task(cfg) -> None:  # the job's return value is kept by Hydra: not the model run() hands back
        run(settings_or_exit(cfg))

    start(config_name, task)


def start(config_name: str, task) -> None:
    """Hand the (checked) command line to Hydra: ``task(cfg)`` runs once per job of ``conf/<config_name>.yaml``."""
    import hydra

    if not any(a.startswith("hydra.job.name=") for a in sys.argv):
        sys.argv.append(f"hydra.job.name={config_name}")  # the job log is <run dir>/<stage>.log

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name=config_name)
    def main(cfg):
        return task(cfg)

    main()
