import ArgumentParser
import Foundation
import TetherComm
import TetherGradients
import TetherNN
import TetherTensor
import TetherTrain

/// `tether plan`: what a job would do on 1..N hosts, before anyone wires or rents them. It measures one
/// worker's step of the job here (as `bench train` does: forward and backward, the optimizer) and
/// predicts, for each host count, the step's time split, samples/s and the scaling efficiency against
/// that many undisturbed workers (`ScalingModel`: the ring all-reduce of each bucket, hidden behind
/// backward where it can be).
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict a job's samples/s and scaling efficiency on N hosts from its step measured here and the links.")

    @OptionGroup var training: TrainingOptions
    @Option(help: "Host counts to predict for, comma-separated.") var hosts = "1,2,4,8,16,32,64,128,256"
    @Option(help: "Each host's link, each way: e.g. 1gbit, 10gbit, 25gbit, 500mbit.") var link = "10gbit"
    @Option(help: "One message's latency over a link: e.g. 50us, 0.2ms.") var latency = "50us"
    @Option(help: "Workers per host.") var workersPerHost = 1
    @Option(help: "Cores of a host (default: this machine's).") var hostCores: Int?
    @Option(help: "The job's gradient bucket size in MB (--bucket-mb).") var bucketMb = 1.0
    @Option(help: "The gradients on the wire: none, fp16, bf16 or powersgd (--compression).")
    var compression: TrainingConfig.Compression = .none
    @Option(help: "PowerSGD's rank (--powersgd-rank).") var powersgdRank = TrainingConfig.defaultPowerSGDRank
    @Option(
        help:
            "How the buckets are all-reduced (--collective): by-size (the default), ring, recursive-doubling, halving-doubling, tree or auto; the last line compares them all."
    )
    var collective: AllReduceAlgorithm = .bySize
    @Option(help: "Steps measured (after 5 untimed).") var steps = 20
    @Option(help: "A worker's forward and backward in ms, measured elsewhere (the target hosts, a job's log): nothing is timed here.")
    var computeMs: Double?
    @Option(help: "With --compute-ms: the optimizer's ms a step (0 when not given).") var optimizerMs: Double?
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ResourceOptions

    func validate() throws {
        guard steps > 0, workersPerHost > 0, bucketMb > 0, (1...1024).contains(powersgdRank) else {
            throw ValidationError("--steps, --workers-per-host and --bucket-mb must be positive, --powersgd-rank in 1...1024")
        }
        guard computeMs.map({ $0 > 0 && $0 < 1e7 }) ?? true, optimizerMs.map({ $0 >= 0 && $0 < 1e7 }) ?? true else {
            throw ValidationError("--compute-ms must be positive and --optimizer-ms not negative (both under 10,000 s)")
        }
        guard optimizerMs == nil || computeMs != nil else {
            throw ValidationError("--optimizer-ms goes with --compute-ms (a step measured elsewhere); without it both are timed here")
        }
        _ = try Self.hostCounts(hosts)
        _ = try Self.bytesPerSecond(link)
        _ = try Self.seconds(latency)
    }

    static func hostCounts(_ text: String) throws -> [Int] {
        let counts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 1 << 20 }) else {
            throw ValidationError("--hosts takes host counts, comma-separated, each in 1...\(1 << 20): got \(text)")
        }
        return counts.map { $0! }
    }

    /// "10gbit" -> bytes per second.
    static func bytesPerSecond(_ text: String) throws -> Double {
        let units: [(String, Double)] = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)]
        for (unit, scale) in units where text.lowercased().hasSuffix(unit) {
            if let v = Double(text.dropLast(unit.count)), v > 0, v.isFinite { return v * scale / 8 }
        }
        throw ValidationError("--link takes a rate such as 1gbit, 10gbit or 500mbit: got \(text)")
    }

    /// "50us", "0.2ms", "1s" -> seconds.
    static func seconds(_ text: String) throws -> Double {
        for (unit, scale) in [("us", 1e-6), ("ms", 1e-3), ("s", 1.0)] where text.hasSuffix(unit) {
            if let v = Double(text.dropLast(unit.count)), v >= 0, v * scale < 10 { return v * scale }
        }
        throw ValidationError("--latency takes a time such as 50us or 0.2ms (under 10 s): got \(text)")
    }

    func run() throws {
        threads.apply(holder: "this process")
        do {
            var stepper = try Stepper(training)
            let (config, model) = (stepper.config, stepper.workload.model)
            // the step as given, or the medians of `steps` timed here after 5 untimed
            let forwardBackward: Double, optimizing: Double
            if let computeMs {
                forwardBackward = computeMs / 1000
                optimizing = (optimizerMs ?? 0) / 1000
            } else {
                let times = try (0..<(5 + steps)).map { _ in try stepper.step().times }.dropFirst(5)
                func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
                forwardBackward = median(times.map(\.compute))
                optimizing = median(times.map(\.optimizer))
            }
            let bytes = Self.wireBytes(model.arena.layout, compression: compression, rank: powersgdRank)
            var m = ScalingModel(
                forwardBackward: forwardBackward, optimizer: optimizing,
                batch: try ModelFamily.named(config.model).itemsPerStep(config), gradientBytes: bytes,
                bucketBytes: bucketMb * 1_048_576, bandwidth: try Self.bytesPerSecond(link), latency: try Self.seconds(latency))
            (m.threadsPerWorker, m.coresPerHost) = (Compute.threads, hostCores ?? ProcessInfo.processInfo.activeProcessorCount)
            let counts = try Self.hostCounts(hosts)
            // every collective's efficiency at each host count, for the comparison
            var byCollective: [(AllReduceAlgorithm, [Double])] = []
            for c in AllReduceAlgorithm.allCases {
                var each = m
                each.collective = c
                byCollective.append((c, counts.map { each.predict(hosts: $0, workersPerHost: workersPerHost).efficiency }))
            }
            m.collective = collective
            let predictions = counts.map { m.predict(hosts: $0, workersPerHost: workersPerHost) }
            let below = predictions.first { $0.efficiency < 0.8 }
            if json {
                let rows: [[String: Any]] = predictions.map {
                    [
                        "hosts": $0.hosts, "ranks": $0.ranks, "samples_per_sec": $0.samplesPerSecond, "compute_ms": $0.compute * 1000,
                        "exposed_exchange_ms": $0.exposedExchange * 1000, "efficiency": $0.efficiency,
                        "schedules": m.schedules(ranks: $0.ranks).map(\.rawValue)
                    ]
                }
                let out: [String: Any] = [
                    "model": config.model, "batch": m.batch, "threads": m.threadsPerWorker, "forward_backward_ms": m.forwardBackward * 1000,
                    "compute_measured_here": computeMs == nil,
                    "optimizer_ms": m.optimizer * 1000, "gradient_bytes": bytes, "link_bytes_per_sec": m.bandwidth,
                    "latency_s": m.latency, "workers_per_host": workersPerHost, "cores_per_host": m.coresPerHost,
                    "compression": compression.rawValue, "collective": collective.rawValue, "predictions": rows,
                    "efficiency_by_collective": Dictionary(uniqueKeysWithValues: byCollective.map { ($0.0.rawValue, $0.1) })
                ]
                print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
                return
            }
            print(
                String(
                    format:
                        "%@ batch %d, %d thread(s): a step %@ takes %.1f ms (forward and backward %.1f, optimizer %.1f); %@ of gradients a step (%@) in %.3g MB buckets",
                    config.modelName, m.batch, m.threadsPerWorker, computeMs == nil ? "here" : "as given",
                    (m.forwardBackward + m.optimizer) * 1000, m.forwardBackward * 1000,
                    m.optimizer * 1000, ProgressDisplay.bytes(bytes), compression == .none ? "f32" : compression.rawValue, bucketMb))
            print(
                "links \(link) each way, \(latency) latency; \(workersPerHost) worker(s) per host of \(m.coresPerHost) cores; all-reduce \(collective == .bySize ? "chosen by size (the default)" : "by " + collective.rawValue)"
            )
            // the schedules the buckets take: the full ones', then the last one's where it differs
            print("hosts   ranks   samples/s    step ms   compute ms   exchange ms   efficiency   schedule")
            for p in predictions {
                let names = m.schedules(ranks: p.ranks).map(\.rawValue)
                let schedules = names.count > 1 ? "\(names[0]) (the last bucket \(names[1]))" : names.first ?? "-"
                print(
                    String(
                        format: "%5d %7d %11.0f %10.2f %12.2f %13.2f %11.0f%%   %@", p.hosts, p.ranks, p.samplesPerSecond,
                        (p.compute + p.exposedExchange) * 1000, p.compute * 1000, p.exposedExchange * 1000, p.efficiency * 100, schedules))
            }
            print(below.map { "efficiency falls below 80% from \($0.hosts) hosts" } ?? "efficiency stays at 80% or above")
            print(
                "efficiency at \(counts.last!) hosts by collective: "
                    + byCollective.map { String(format: "%@ %.0f%%", $0.0.rawValue, $0.1.last! * 100) }.joined(separator: ", "))
        } catch {
            exitWithError(error)
        }
    }

    /// The bytes one step's gradients take on the wire: f32 or 16-bit values, or PowerSGD's factors
    /// for each matrix (rows + columns) x rank, vectors whole. Row-sparse tables count as dense.
    static func wireBytes(_ layout: ArenaLayout, compression: TrainingConfig.Compression, rank: Int) -> Double {
        switch compression {
        case .none: return Double(layout.entries.reduce(0) { $0 + $1.count }) * 4
        case .fp16, .bf16: return Double(layout.entries.reduce(0) { $0 + $1.count }) * 2
        case .powersgd:
            return layout.entries.reduce(0.0) { total, e in
                guard e.shape.count >= 2 else { return total + Double(e.count) * 4 }
                let rows = e.shape[0], columns = e.count / max(1, rows)
                return total + Double(min(e.count, rank * (rows + columns))) * 4
            }
        }
    }
}
