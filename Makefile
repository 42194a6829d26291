# clasp: build the zipapp, run the tests, build and run the container.
PYTHON ?= python3
IMAGE ?= clasp
VERSION := $(shell $(PYTHON) -c 'import clasp; print(clasp.__version__)')
CONTAINER ?= clasp
PORT ?= 8080

.PHONY: build test zipapp docker docker-run docker-stop clean

build: zipapp

# The README's test command.
test:
	$(PYTHON) -m pytest tests

zipapp:
	$(PYTHON) tools/build_zipapp.py --output dist/clasp.pyz
	$(PYTHON) -I dist/clasp.pyz -version

docker:
	docker build -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

# Reads .env (cp .env.example .env); publishes the port on loopback only (host port: PORT=...).
docker-run:
	docker run -d --name $(CONTAINER) --env-file .env -e CLASP_PORT=8080 -p 127.0.0.1:$(PORT):8080 $(IMAGE):latest

docker-stop:
	-docker stop $(CONTAINER)
	-docker rm $(CONTAINER)

clean:
	rm -rf dist build .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
