"""lm-eval's own command line on a lords folder: ``import lords`` (which registers ``quant_method: "lords"`` with
transformers), then lm-eval's CLI unchanged, with the shipped offline tasks on its task path.

    python -m lords_pipelines.evaluation.lm_eval_cli run --model hf --model_args pretrained=<lords folder> \\
        --tasks lords_cloze --device cpu --batch_size 1
    python -m lords_pipelines.evaluation.lm_eval_cli run --model hf --model_args pretrained=<lords folder> --tasks arc_easy  # online

Every lm-eval option works as documented by lm-eval; ``--include_path lords_pipelines/evaluation/tasks`` is added when absent.
"""

from __future__ import annotations

import sys
import warnings

from lords_pipelines.evaluation.scores import LOCAL_TASKS


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    import lords  # noqa: F401  (registers the lords quantizer before lm-eval calls from_pretrained)

    # lm-eval hands its own quantization arguments to from_pretrained; a lords folder's config wins, as it should.
    warnings.filterwarnings("ignore", message="You passed `quantization_config` or equivalent parameters")
    argv = list(sys.argv[1:] if argv is None else argv)
    running = not argv or argv[0] not in ("ls", "validate", "-h", "--help")
    if running and "--include_path" not in argv:
        argv += ["--include_path", str(LOCAL_TASKS)]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
