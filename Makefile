.PHONY: test demo

# Runs the whole test suite; installs what it needs (see scripts/test.sh).
test:
	./scripts/test.sh

# Runs the demo on the embedded default (SQLite, embedded Redis, simulated providers).
demo:
	./scripts/demo.sh
