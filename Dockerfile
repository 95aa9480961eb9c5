# bqsink's image: the static binary on distroless, run as its non-root user
# (uid 65532). It carries no config: mount yours at /etc/bqsink/config.yaml
# (README, "Docker"). config.yaml in this repository points at the local
# test stack with authentication off, and .dockerignore keeps it out.
#
#   docker build -t bqsink \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) \
#     --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#   docker run --rm bqsink -version
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=unknown
ARG BUILD_DATE=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT} -X main.date=${BUILD_DATE}" -o /bqsink . && /bqsink -version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /bqsink /bqsink
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/bqsink", "-config", "/etc/bqsink/config.yaml"]
