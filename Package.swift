// swift-tools-version:6.0
import PackageDescription

// Module graph (one way only):
//   CBLAS, CTetherKernels -> TetherTensor -> TetherNN ---\
//   CZlib -> TetherData -----------------> TetherTrain -> tether    (TetherTrain also: TetherJobFile, for the shipped
//   TetherNN + Yams -> TetherJobFile ----/                            model specs, and TetherONNX, for starting weights)
//   TetherTrain + TetherComm -> TetherObservability (Prometheus, TensorBoard, the timeline, the report) -> tether
//   CProtobufC -> TetherWire -> TetherMessages (the envelope and control messages as values: what the
//     state machines speak) -> TetherComm (ZeroMQ, the ring; also CZeroMQ, CXXHash, CSodium, CTetherCrypto, CTetherKernels) -/
//   TetherNN + TetherComm -> TetherGradients (buckets, overlap, compression, PowerSGD, sparse rows)
//   TetherTrain + TetherGradients + TetherObservability -> TetherCluster (coordinator, workers) -> tether
//   TetherNN + TetherWire -> TetherONNX (ONNX models in and out) -> tether
//   CTetherProcess -> TetherProcess (child processes by posix_spawn) -> tether
let package = Package(
    name: "Tether",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tether", targets: ["tether"]),
        .library(name: "TetherFuzz", targets: ["TetherFuzz"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2")
    ],
    targets: [
        // C libraries, each behind a small system-library target (apt names in `providers`).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        // protoc-c output only; regenerate with scripts/generate-proto, never edit.
        .target(name: "TetherWire", dependencies: ["CProtobufC"]),

        // The loops Swift cannot vectorize (no restrict, no fast-math), multiversioned per CPU.
        .target(name: "CTetherKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),
        // Process and memory helpers Swift cannot express (prctl, mallopt, atomics on shared memory).
        .target(name: "CTetherProcess"),
        // Child processes started with posix_spawn (simulate's workers, bench's ranks, the tests' runs).
        .target(name: "TetherProcess", dependencies: ["CTetherProcess"]),
        // The ring's payload AEAD through OpenSSL's EVP (libcrypto, from libssl-dev).
        .target(name: "CTetherCrypto", linkerSettings: [.linkedLibrary("crypto")]),
        .target(name: "TetherTensor", dependencies: ["CBLAS", "CTetherKernels", "CTetherProcess"]),
        .target(name: "TetherNN", dependencies: ["TetherTensor"]),
        .target(name: "TetherData", dependencies: ["TetherTensor", "CZlib"]),
        // The cluster's messages as Swift values (the envelope, ring chunk headers, the control plane's
        // orders and reports) and their protobuf-c conversions: what the state machines speak.
        .target(name: "TetherMessages", dependencies: ["TetherWire", "CProtobufC"]),
        .target(
            name: "TetherComm",
            dependencies: [
                "TetherMessages", "TetherWire", "CZeroMQ", "CProtobufC", "CXXHash", "CSodium", "CTetherCrypto", "CTetherKernels",
                "CTetherProcess", .product(name: "Logging", package: "swift-log")
            ]),
        .target(name: "TetherTrain", dependencies: ["TetherTensor", "TetherNN", "TetherData", "TetherJobFile", "TetherONNX", "CXXHash"]),
        // What a run shows outside itself (Prometheus, TensorBoard files, the HTML report), fed through TetherTrain's MetricsSink.
        .target(name: "TetherObservability", dependencies: ["TetherTrain", "TetherWire", "TetherMessages", "TetherComm"]),
        // The data-parallel gradient pipeline between the collectives and the training loop: a step's
        // dense buckets (overlapped with backward), their compression (f16, bf16, PowerSGD), sparse rows.
        .target(name: "TetherGradients", dependencies: ["TetherMessages", "TetherComm", "TetherNN", "TetherTensor", "CTetherKernels"]),
        .target(
            name: "TetherCluster",
            dependencies: [
                "TetherTrain", "TetherMessages", "TetherComm", "TetherGradients", "TetherObservability", "TetherNN", "TetherData",
                "TetherTensor", "CXXHash",
                "CTetherKernels",
                .product(name: "Logging", package: "swift-log")
            ]),
        .target(name: "TetherJobFile", dependencies: ["TetherNN", "TetherTensor", .product(name: "Yams", package: "Yams")]),
        // ONNX models in and out (proto/onnx.proto through protoc-c): export a trained spec, import a graph.
        .target(name: "TetherONNX", dependencies: ["TetherNN", "TetherTensor", "TetherWire", "CProtobufC"]),
        // The fuzz targets (bench/fuzz runs them under libFuzzer; the tests run each briefly).
        .target(
            name: "TetherFuzz",
            dependencies: [
                "TetherMessages", "TetherComm", "TetherData", "TetherNN", "TetherTrain", "TetherCluster", "TetherJobFile", "TetherONNX"
            ]),
        .executableTarget(
            name: "tether",
            dependencies: [
                "TetherCluster", "TetherJobFile", "TetherONNX", "TetherTrain", "TetherObservability", "TetherMessages", "TetherComm",
                "TetherGradients", "TetherData",
                "TetherNN", "TetherTensor",
                "CXXHash",
                "CTetherKernels", "CTetherProcess", "TetherProcess",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log")
            ]),

        .testTarget(name: "TetherTensorTests", dependencies: ["TetherTensor", "CTetherKernels"]),
        .testTarget(name: "TetherNNTests", dependencies: ["TetherNN", "TetherTensor", "TetherJobFile"]),
        .testTarget(name: "TetherDataTests", dependencies: ["TetherData", "TetherTensor", "CZlib"]),
        .testTarget(
            name: "TetherCommTests",
            dependencies: [
                "TetherComm", "TetherMessages", "TetherWire", "CZeroMQ", "CTetherKernels", "TetherProcess",
                .product(name: "Logging", package: "swift-log")
            ]),
        .testTarget(name: "TetherMessagesTests", dependencies: ["TetherMessages", "TetherWire"]),
        .testTarget(name: "TetherTrainTests", dependencies: ["TetherTrain", "TetherNN", "TetherData", "TetherTensor"]),
        .testTarget(name: "TetherObservabilityTests", dependencies: ["TetherObservability", "TetherTrain", "TetherNN", "TetherComm"]),
        .testTarget(
            name: "TetherGradientsTests", dependencies: ["TetherGradients", "TetherComm", "TetherNN", "TetherTensor", "TetherTrain"]),
        .testTarget(
            name: "TetherClusterTests",
            dependencies: ["TetherCluster", "TetherComm", "TetherData", "TetherTrain", "TetherNN", "TetherTensor", "TetherJobFile"]),
        .testTarget(name: "TetherJobFileTests", dependencies: ["TetherJobFile", "TetherNN"]),
        .testTarget(name: "TetherONNXTests", dependencies: ["TetherONNX", "TetherNN", "TetherTensor", "TetherTrain", "TetherProcess"]),
        .testTarget(name: "TetherFuzzTests", dependencies: ["TetherFuzz", "TetherComm", "TetherTrain"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["TetherProcess", "TetherComm", "TetherData", "TetherTrain", .product(name: "Logging", package: "swift-log")])
    ],
    swiftLanguageModes: [.v5]
)
