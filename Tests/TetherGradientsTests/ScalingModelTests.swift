import TetherComm
import Testing

@testable import TetherGradients

/// `tether plan`'s arithmetic on figures given by hand: the ring's cost, what backward hides, workers
/// sharing a host's cores, and the efficiency against one undisturbed worker.
struct ScalingModelTests {
    /// 10 ms of forward and backward, 2 ms of optimizer, 64 samples, 4 MB of gradients in 1 MB buckets,
    /// 1 Gbit/s links (125 MB/s) with 50 us of latency, the ring.
    static let base = {
        var m = ScalingModel(
            forwardBackward: 0.010, optimizer: 0.002, batch: 64, gradientBytes: 4e6, bucketBytes: 1e6, bandwidth: 125e6, latency: 50e-6)
        m.collective = .ring
        return m
    }()

    @Test func theRingCostsItsLatenciesAndItsShareOfTheBytes() {
        #expect(abs(Self.base.ringSeconds(1e6, ranks: 8) - (14 * 50e-6 + 14.0 / 8 * 1e6 / 125e6)) < 1e-12)
        #expect(Self.base.ringSeconds(1e6, ranks: 1) == 0)
    }

    @Test func oneWorkerExchangesNothing() {
        let p = Self.base.predict(hosts: 1)
        #expect(p.exposedExchange == 0 && abs(p.samplesPerSecond - 64 / 0.012) < 1e-9 && abs(p.efficiency - 1) < 1e-12)
    }

    @Test func backwardHidesWhatItOutlasts() {
        // 8 hosts: a 1 MB bucket takes 14.7 ms; backward (6.7 ms) makes a bucket final every 1.67 ms, so the
        // four go back to back from 1.67 ms: the last ends 1.67 + 4 x 14.7 ms in, 4 x 14.7 - 5 ms after backward
        let p = Self.base.predict(hosts: 8)
        let bucket = Self.base.ringSeconds(1e6, ranks: 8), backward = 0.010 * 2 / 3
        #expect(abs(p.exposedExchange - (backward / 4 + 4 * bucket - backward)) < 1e-12)
        #expect(abs(p.samplesPerSecond - 8 * 64 / (0.012 + p.exposedExchange)) < 1e-6)
        // a long backward hides all but the last bucket, which is final only at its end
        var slow = Self.base
        slow.forwardBackward = 1.0
        #expect(abs(slow.predict(hosts: 8).exposedExchange - bucket) < 1e-12)
        #expect(slow.predict(hosts: 8).efficiency > 0.98)
        // one bucket of everything: none of it is hidden
        var whole = Self.base
        whole.bucketBytes = 8e6
        #expect(abs(whole.predict(hosts: 8).exposedExchange - Self.base.ringSeconds(4e6, ranks: 8)) < 1e-12)
    }

    /// Each collective's exchange by the cost model: one bucket of everything over 8 hosts exposes
    /// exactly that collective's time; auto's is the least of them; halving-doubling's few latencies
    /// win small buckets, and the ring's the largest on 6 hosts.
    @Test func eachCollectiveCostsWhatItsModelSays() {
        var whole = Self.base
        whole.bucketBytes = 8e6
        let cost = CollectiveCost(latency: 50e-6, bandwidth: 125e6)
        var exposed: [AllReduceAlgorithm: Double] = [:]
        for collective in AllReduceAlgorithm.allCases {
            whole.collective = collective
            exposed[collective] = whole.predict(hosts: 8).exposedExchange
        }
        #expect(abs(exposed[.halvingDoubling]! - cost.seconds(.halvingDoubling, ranks: 8, bytes: 4_000_000)) < 1e-12)
        #expect(abs(exposed[.tree]! - cost.seconds(.tree, ranks: 8, bytes: 4_000_000)) < 1e-12)
        #expect(exposed[.ring] == Self.base.ringSeconds(4e6, ranks: 8))
        #expect(exposed[.auto]! <= min(exposed[.ring]!, exposed[.halvingDoubling]!) && exposed[.auto]! > 0)
        var small = Self.base
        (small.bucketBytes, small.gradientBytes, small.forwardBackward) = (64e3, 64e3, 1e-6)
        small.collective = .halvingDoubling
        let hd = small.allReduceSeconds(64e3, ranks: 8)
        small.collective = .ring
        #expect(hd < small.allReduceSeconds(64e3, ranks: 8))
        small.collective = .auto
        #expect(abs(small.allReduceSeconds(64e6, ranks: 6) - small.ringSeconds(64e6, ranks: 6)) < 1e-12)
        // by size: the rule's schedule at these links' figures (1 Gbit/s at 50 us, 6.25 KB of latency x
        // bandwidth: halving-doubling for 64 KB on 8), and what each size of bucket takes: mlp-wn's 1 MiB
        // buckets and its last 30 KB on 8 and 64 ranks
        var mlp = Self.base
        (mlp.collective, mlp.gradientBytes, mlp.bucketBytes) = (.bySize, 269_844 * 4, 1_048_576)
        #expect(mlp.schedules(ranks: 8) == [.ring, .halvingDoubling] && mlp.schedules(ranks: 64) == [.halvingDoubling])
        #expect(mlp.schedules(ranks: 1).isEmpty && Self.base.schedules(ranks: 8) == [.ring])
        small.collective = .bySize
        #expect(abs(small.allReduceSeconds(64e3, ranks: 8) - hd) < 1e-12)
        // on the nominal link (10 Gbit/s at 50 us: ten times the latency's worth in bytes) the rule
        // takes recursive doubling for the small buffers instead
        (mlp.bandwidth, small.bandwidth) = (1.25e9, 1.25e9)
        #expect(
            mlp.schedules(ranks: 8) == [.ring, .recursiveDoubling] && mlp.schedules(ranks: 64) == [.halvingDoubling, .recursiveDoubling])
        let rd = CollectiveCost.nominal.seconds(.recursiveDoubling, ranks: 8, bytes: 64_000)
        #expect(abs(small.allReduceSeconds(64e3, ranks: 8) - rd) < 1e-12)
    }

    @Test func workersBeyondAHostsCoresShareThem() {
        var m = Self.base
        (m.coresPerHost, m.threadsPerWorker) = (2, 1)
        #expect(abs(m.predict(hosts: 1, workersPerHost: 4).compute - 2 * 0.012) < 1e-12)
        #expect(abs(m.predict(hosts: 1, workersPerHost: 2).compute - 0.012) < 1e-12)
        // four ranks on one host, each at half speed: at most half the efficiency
        #expect(m.predict(hosts: 1, workersPerHost: 4).efficiency <= 0.5)
    }

    /// Jobs run on emulated hosts (bench/plan-vs-netns: network namespaces, tbf-shaped links, the job's
    /// ring under CURVE and the AEAD): mlp-wn, 269,844 float parameters, batch 64, 1 MB buckets; the
    /// figures the plan was given (the slowest rank's compute and optimizer a step, the hop latency the
    /// ring measured) and the samples/s the job ran at. The prediction stays within 15% of each.
    @Test func predictsRecordedJobsWithinFifteenPercent() {
        let recorded: [(hosts: Int, linkBits: Double, latency: Double, compute: Double, optimizer: Double, samplesPerSecond: Double)] = [
            (2, 100e6, 178.9e-6, 1.64e-3, 0.19e-3, 1416),
            (4, 100e6, 175.4e-6, 3.11e-3, 0.22e-3, 1888),
            (8, 100e6, 168.7e-6, 7.21e-3, 0.47e-3, 3231),
            (8, 1e9, 183.3e-6, 7.17e-3, 0.73e-3, 20577)
        ]
        for r in recorded {
            var m = ScalingModel(
                forwardBackward: r.compute, optimizer: r.optimizer, batch: 64, gradientBytes: 269_844 * 4, bucketBytes: 1_048_576,
                bandwidth: r.linkBits / 8, latency: r.latency)
            m.collective = .ring  // as those jobs ran
            let predicted = m.predict(hosts: r.hosts).samplesPerSecond
            #expect(
                abs(predicted / r.samplesPerSecond - 1) < 0.15, "\(r.hosts) hosts: predicted \(predicted), measured \(r.samplesPerSecond)")
        }
    }
}
