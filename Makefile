# ams_ros: the two commands a fresh machine needs are `make demo` and `make test`;
# both run `make setup` first (idempotent; installs what they need).
#
# ROS 2 distribution: jazzy (LTS) by default; `ROS_DISTRO=kilted make test` (or
# `make test ROS_DISTRO=kilted`) picks Kilted. AMS_ROS_DISTRO wins over ROS_DISTRO, for machines
# whose ROS_DISTRO (set by a sourced /opt/ros/<distro>/setup.bash) names another distribution.
# Each distribution has its own .venv-<d>, build-<d>/, install-<d>/, log-<d>/ and .env-<d>.sh.
SHELL := /bin/bash
DISTROS := jazzy kilted
DISTRO := $(strip $(or $(AMS_ROS_DISTRO),$(ROS_DISTRO),jazzy))
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),test)),)
ifneq ($(words $(filter $(DISTROS),$(DISTRO))) $(words $(DISTRO)),1 1)
$(error ROS 2 distribution '$(DISTRO)' (from $(if $(AMS_ROS_DISTRO),AMS_ROS_DISTRO,ROS_DISTRO)) is not one this workspace can install: choose one of: $(DISTROS) (default jazzy; e.g. ROS_DISTRO=kilted make test). Where ROS_DISTRO names another distribution, set AMS_ROS_DISTRO=jazzy or kilted)
endif
endif
ENV := source .env-$(DISTRO).sh &&
# DDS stays on this machine: loopback discovery and a private domain (see README).
LOOPBACK := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$(( 40 + $$$$ % 50 ))}
ARGS ?=
# test paths (default: the whole suite) and further pytest options
TESTS ?= test
PYTEST_ARGS ?=

.PHONY: setup test demo bench eval fuzz soak faults clean

setup:
	@AMS_ROS_DISTRO=$(DISTRO) tools/setup.sh

test: setup
	@$(ENV) $(LOOPBACK) python -m pytest $(TESTS) $(PYTEST_ARGS)

demo: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.demo $(ARGS)

bench: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.bench $(ARGS)

# seeded fuzzer over updates, frame batches and images (issue #13): make fuzz ARGS="--cases 10000"
fuzz: setup
	@$(ENV) $(LOOPBACK) OMP_NUM_THREADS=1 nice python -m ams_ros.fuzz $(ARGS)

# soak benchmark (issue #13): one hour of stream time at demo size, both processes' RSS every 30 s
# (out/soak/rss.json, rss.png; the slope in summary.json)
soak: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.demo --out out/soak --duration 3600 --no-video --rss-every 30 --quiet $(ARGS)

# fault benchmarks (issue #13): one demo run per scenario (updates or batches dropped, duplicated and
# reordered updates, forgeries from a third process, server kill -9 and restart, robot restart);
# out/faults/faults.json and faults.md. One scenario: make faults ARGS="--scenarios server_kill"
faults: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.demo.faults $(ARGS)

eval: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.eval.cli $(ARGS)

# every distribution's build, install and log folders (the venvs stay: `rm -rf .venv .venv-*` for those);
# build/ install/ log/ .venv are the single-distribution layout of earlier checkouts
clean:
	rm -rf $(foreach d,$(DISTROS),build-$(d) install-$(d) log-$(d) .env-$(d).sh) build install log log-colcon-build.txt out .env.sh
