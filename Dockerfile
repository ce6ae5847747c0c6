# deputy's container image: the `dist` build (fat LTO) on distroless, with the defaults the Helm
# chart runs it with (helm/deputy: deputy.image, deputy.command, the non-root user, the bundle
# and state mount paths). README.md, "The container image", builds and pushes it.
#
# The image holds the binary only: the policy bundle and the delegation state are volumes, and
# nothing else is written, so the root filesystem can be read-only.
#
# CI has no container engine, so scripts/image-check (run by scripts/test) lays out this file's
# build context from .dockerignore, runs the build stage's commands there as written, and runs
# the result the way the runtime stage says; it refuses instructions it does not emulate.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin deputy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/deputy /usr/local/bin/deputy
# distroless's `nonroot`; the chart's deputy.securityContext runs as the same ids.
USER 65532:65532
# Where the chart mounts the bundle (bundle.mountPath, read-only) and the state
# (state.mountPath, writable by 65532), so that the same volumes serve without flags.
ENV DEPUTY_BUNDLE=/etc/deputy/bundle \
    DEPUTY_STATE=/var/lib/deputy \
    DEPUTY_LOG_FORMAT=json
ENTRYPOINT ["deputy"]
CMD ["serve"]
