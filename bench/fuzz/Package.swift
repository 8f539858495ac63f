// swift-tools-version:6.0
// The libFuzzer harness: one binary running any of Tether's fuzz targets (TetherFuzz) under libFuzzer.
// Built by bench/fuzz/run with -sanitize=fuzzer on every Swift module, so the decoders are
// coverage-instrumented; not part of the main package, whose build must not need libFuzzer.
import PackageDescription

let package = Package(
    name: "TetherFuzzHarness",
    dependencies: [.package(name: "Tether", path: "../..")],
    targets: [
        .target(name: "CFuzzer"),
        .executableTarget(name: "tether-fuzz", dependencies: ["CFuzzer", .product(name: "TetherFuzz", package: "Tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])],
                          linkerSettings: [.unsafeFlags(["-sanitize=fuzzer"])]),
    ],
    swiftLanguageModes: [.v5]
)
