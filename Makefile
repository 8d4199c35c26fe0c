# Convenience targets; the scripts are the source of truth for CI and the quick start.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/banger-vm/banger/internal/buildinfo.version=$(VERSION)

.PHONY: build test test-all lint bench install release

# banger-init and banger-agent go next to banger: the daemon builds each VM's initramfs
# from them.
BINARIES := banger banger-init banger-agent

build:
	for b in $(BINARIES); do CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/$$b ./cmd/$$b || exit 1; done

# Fast local loop: the race-enabled suite as the current user.
test:
	$(GO) test -race ./...

# Everything CI runs (needs root: installs packages, creates an unprivileged test user).
test-all:
	bash scripts/test.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/system/...

install: build
	for b in $(BINARIES); do install -m 0755 bin/$$b /usr/local/bin/$$b || exit 1; done

# A signed release into a channel directory: make release KEY=path/release.key CHANNEL=dir
release:
	@test -n "$(KEY)" -a -n "$(CHANNEL)" || { echo "usage: make release KEY=path/to/release.key CHANNEL=channel/dir"; exit 2; }
	bash scripts/release.sh --key "$(KEY)" --out "$(CHANNEL)"
