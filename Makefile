# Two commands for a fresh clone: `make demo` and `make test`. Both go through `make install`.
PYTHON ?= python3
VENV   ?= .venv
# The tested torch. Override to bring your own, e.g. `make install TORCH=torch==2.5.1`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-ondevice fashion clean

install: $(STAMP)

# Re-run only when the package's requirements change. torch is named with its pin in the same
# pip call, so the resolver can never swap in a newer (CUDA) build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test,export,openvino,qat]"
	# timm and torchvision are the tests' oracles for V3 and V4 weights, both without their dependencies
	# (which would bring another torch); torchvision's wheel is a CUDA build whose C operators do not
	# load here, so it goes into a folder off the import path (tests/reference.py)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps "timm==1.0.31"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
		--target $(VENV)/torchvision-0.28 "torchvision==0.28.0"
	$(BIN)/python -m mobilenet.fused
	@echo "$(TORCH)" > $(STAMP)

# The demo recipe: V1 at width 0.5 with small-input strides on the embedded digits (about a minute
# of training on 2 cores). The accuracy printed is the last epoch's, not the best one picked on test.
DEMO_OUT ?= runs/demo
DEMO_ARGS = --model mobilenet_v1 --width 0.5 --small-input --data digits --epochs 12 --batch-size 32 \
	--lr 0.2 --warmup-epochs 1 --label-smoothing 0.1 --seed 0

demo: install
	rm -rf $(DEMO_OUT)
	$(BIN)/mobilenet train --out $(DEMO_OUT) $(DEMO_ARGS)
	$(BIN)/mobilenet eval $(DEMO_OUT)/last.safetensors --data digits
	$(BIN)/mobilenet cost mobilenet_v1 --width 0.5 --small-input --resolution 32 --num-classes 10 | tail -n 1
	@echo "run directory: $(DEMO_OUT) (curves.png, last.confusion.png, metrics.jsonl, checkpoints)"

# One pytest-xdist worker per core, each on its share of the threads (tests/conftest.py); the tests
# that share a costly fixture or worker process stay on one worker (xdist_group).
test: install
	$(BIN)/python -m pytest -n auto --dist loadgroup

# The phone exports (ExecuTorch, LiteRT, Core ML): each converter is 1-2 GB, so each gets its own
# virtual environment beside .venv, kept out of `make install` and `make test`. .ci/run calls this
# after `make test`; tests/ondevice/test_FORMAT.py runs in its own environment.
ONDEVICE := executorch tflite coreml
test-ondevice: $(foreach x,$(ONDEVICE),$(VENV)-$(x)/.installed)
	@for x in $(ONDEVICE); do echo "== $$x"; $(VENV)-$$x/bin/python -m pytest tests/ondevice/test_$$x.py || exit 1; done

$(VENV)-%/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)-$*
	$(VENV)-$*/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test,export,$*]"
	$(VENV)-$*/bin/python -m mobilenet.fused
	@echo "$(TORCH)" > $@

# The Fashion-MNIST recipe (README, "Real data"): about 115 minutes on a 2-core AMX Xeon. Needs the data:
# `apt-get install dataset-fashion-mnist`, or FASHION_ARGS=--download. Results: benchmarks/results/.
FASHION_ARGS ?=
fashion: install
	$(BIN)/python benchmarks/fashion_mnist.py $(FASHION_ARGS)

clean:
	rm -rf $(VENV) $(foreach x,$(ONDEVICE),$(VENV)-$(x)) runs
