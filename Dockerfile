# Build: docker build -t bqsink .
# Run:   docker run --rm -v $PWD/config.yaml:/etc/bqsink/config.yaml -p 8080:8080 bqsink
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /bqsink .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /bqsink /bqsink
COPY config.yaml /etc/bqsink/config.yaml
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/bqsink", "-config", "/etc/bqsink/config.yaml"]
