# ams_ros: the two commands a fresh machine needs are `make demo` and `make test`;
# both run `make setup` first (idempotent; installs what they need).
SHELL := /bin/bash
ENV := source .env.sh &&
# DDS stays on this machine: loopback discovery and a private domain (see README).
LOOPBACK := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$(( 40 + $$$$ % 50 ))}
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test demo bench eval clean

setup:
	@tools/setup.sh

test: setup
	@$(ENV) $(LOOPBACK) python -m pytest test $(PYTEST_ARGS)

demo: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.demo $(ARGS)

bench: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.bench $(ARGS)

eval: setup
	@$(ENV) $(LOOPBACK) python -m ams_ros.eval.cli $(ARGS)

clean:
	rm -rf build install log log-colcon-build.txt out .env.sh
