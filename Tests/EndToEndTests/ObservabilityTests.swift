import Foundation
import TetherComm
import Testing

/// The tests' own Python with PyPI's readers (scripts/install-deps --test makes it in .build).
enum TestVenv {
    static let python = CLI.repository.appendingPathComponent(".build/test-venv/bin/python")
    static let unavailable: String? = {
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            return "no \(python.path): scripts/install-deps --test makes it (prometheus_client, tensorboard from PyPI)"
        }
        let r = try? CLI.run(["-c", "import prometheus_client, tensorboard"], timeout: 120, executable: python)
        return r?.status == 0 ? nil : "\(python.path) lacks prometheus_client or tensorboard: \(r?.stderr.suffix(300) ?? "")"
    }()

    /// Runs `script` with `arguments`; its standard output parsed as JSON.
    static func json(_ script: String, _ arguments: [String]) throws -> Any {
        let r = try CLI.run(["-c", script] + arguments, timeout: 120, executable: python)
        guard r.status == 0 else { throw CollectiveFailure("python: \(r.stderr.suffix(2000))") }
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
    }
}

/// What a user looks at: the Prometheus page scraped during a run by a real parser, the TensorBoard
/// file read by TensorBoard's own reader, the Chrome trace, all from one real 2-worker run.
@Suite(
    .serialized,
    .enabled(if: dataInstalled && TestVenv.unavailable == nil, "needs Fashion-MNIST and the test venv: \(TestVenv.unavailable ?? "")"))
struct ObservabilityTests {
    static let scrape = """
        import json, sys, urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        page = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
        out = {}
        for family in text_string_to_metric_families(page):
            for s in family.samples:
                out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value, "type": family.type})
        print(json.dumps(out))
        """

    static let readTensorBoard = """
        import json, sys
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
        acc.Reload()
        print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
        """

    @Test func aRunIsSeenInPrometheusTensorBoardAndItsTimeline() throws {
        let dir = CLI.tempDir("observe")
        defer { try? FileManager.default.removeItem(at: dir) }
        let port = CLI.freePorts(1)[0]
        let run = try CLI.start(
            [
                "simulate", "--workers", "2", "--model", "mlp-wn", "--train-limit", "4096", "--test-limit", "500", "--epochs", "3",
                "--batch", "32", "--log-every", "1", "--run-dir", dir.appendingPathComponent("run").path,
                "--metrics-listen", "127.0.0.1:\(port)", "--tensorboard", dir.appendingPathComponent("tb").path,
                "--timeline", dir.appendingPathComponent("trace.json").path, "--collective", "auto"
            ], bound: 240)
        #expect(run.waitFor("training (", timeout: 120), "the job never started training")
        // scrapes while it trains: the page parses, and the step counter goes up
        func value(_ page: [String: [[String: Any]]], _ name: String, rank: String? = nil) -> Double? {
            page[name]?.first { rank == nil || ($0["labels"] as? [String: String])?["rank"] == rank }?["value"] as? Double
        }
        func scrape() throws -> [String: [[String: Any]]] {
            try TestVenv.json(Self.scrape, ["http://127.0.0.1:\(port)/metrics"]) as? [String: [[String: Any]]] ?? [:]
        }
        let first = try scrape()
        var second = try scrape()
        let deadline = Date().addingTimeInterval(60)
        while (value(second, "tether_steps_total") ?? 0) <= (value(first, "tether_steps_total") ?? .infinity), Date() < deadline {
            second = try scrape()
        }
        let result = run.finish()
        #expect(result.status == 0, "simulate failed: \(result.stderr.suffix(2000))")
        let (steps1, steps2) = (value(first, "tether_steps_total"), value(second, "tether_steps_total"))
        #expect(
            steps1 != nil && steps2 != nil && steps2! > steps1!,
            "steps scraped: \(String(describing: steps1)) then \(String(describing: steps2))")
        #expect(value(second, "tether_workers_alive") == 2)
        for rank in ["0", "1"] {
            #expect((value(second, "tether_rank_compute_seconds_total", rank: rank) ?? 0) > 0, "rank \(rank)'s compute seconds")
            #expect((value(second, "tether_rank_dense_sent_bytes_total", rank: rank) ?? 0) > 0, "rank \(rank)'s bytes")
            #expect(
                value(second, "tether_heartbeat_age_seconds", rank: rank).map { $0 >= 0 && $0 < 5 } == true, "rank \(rank)'s heartbeat age")
        }
        #expect(second["tether_loss"] != nil && second["tether_samples_per_second"] != nil)

        // TensorBoard's reader finds every step and epoch line of metrics.jsonl, with its values
        let events = try String(contentsOf: dir.appendingPathComponent("run/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let board = try TestVenv.json(Self.readTensorBoard, [dir.appendingPathComponent("tb").path]) as? [String: [[Double]]] ?? [:]
        func expectSeries(_ tag: String, _ kind: String, _ field: String) {
            let expected = events.filter { $0["event"] as? String == kind }.compactMap { e in
                (e[field] as? Double).map { (e["step"] as! Int, $0) }
            }
            let read = board[tag] ?? []
            #expect(
                !expected.isEmpty && read.count == expected.count, "\(tag): \(read.count) points read, \(expected.count) in metrics.jsonl")
            let off = zip(read, expected).filter { Int($0.0[0]) != $0.1.0 || abs($0.0[1] - $0.1.1) > 1e-6 * max(1, abs($0.1.1)) }
            #expect(
                off.isEmpty,
                "\(tag): points that differ from metrics.jsonl (step, read, written): \(off.prefix(3).map { ($0.1.0, $0.0[1], $0.1.1) })")
        }
        expectSeries("train/loss", "step", "loss")
        expectSeries("train/samples_per_sec", "step", "samples_per_sec")
        expectSeries("test/accuracy", "epoch", "test_accuracy")
        expectSeries("test/loss", "epoch", "test_loss")

        // the timeline: trace-event JSON, one named track per rank, each step's spans on it
        let trace = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("trace.json"))) as? [String: Any]
        let traceEvents = trace?["traceEvents"] as? [[String: Any]] ?? []
        let steps = events.filter { $0["event"] as? String == "step" }.count
        for rank in [0, 1] {
            let track = traceEvents.filter { $0["tid"] as? Int == rank }
            #expect(
                track.contains { $0["ph"] as? String == "M" && ($0["args"] as? [String: Any])?["name"] as? String == "rank \(rank)" },
                "rank \(rank)'s track is not named")
            let spans = track.filter { $0["ph"] as? String == "X" }
            for name in ["forward and backward", "exchange left after backward", "optimizer"] {
                #expect(spans.filter { $0["name"] as? String == name }.count == steps, "rank \(rank): \(name) spans for \(steps) steps")
            }
            let buckets = spans.compactMap { $0["name"] as? String }.filter { $0.hasPrefix("all-reduce bucket") }
            #expect(!buckets.isEmpty, "rank \(rank): no bucket all-reduce spans")
            // each names the schedule --collective auto chose for it
            let schedules = CollectiveCost.Algorithm.allCases.map { ", \($0.rawValue))" }
            #expect(buckets.allSatisfy { name in schedules.contains { name.hasSuffix($0) } }, "rank \(rank): \(Set(buckets))")
            #expect(
                spans.allSatisfy { ($0["ts"] as? Int ?? 0) > 1_600_000_000_000_000 && ($0["dur"] as? Int ?? -1) >= 0 },
                "rank \(rank): a span without a time")
        }
    }
}

/// A worker's own --timeline: its rank's track alone, every step, from a coordinator that asked for none.
@Suite(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
struct WorkerTimelineTests {
    @Test func aWorkerWritesItsOwnTrace() throws {
        let dir = CLI.tempDir("worker-trace")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])"
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "2", "--insecure", "--model", "mlp", "--train-limit", "512",
                "--test-limit", "64", "--epochs", "1", "--batch", "32", "--run-dir", dir.appendingPathComponent("run").path
            ], bound: 120)
        let trace = dir.appendingPathComponent("worker.json").path
        let traced = try CLI.start(["worker", "--coordinator", address, "--insecure", "--timeline", trace], bound: 120)
        let plain = try CLI.start(["worker", "--coordinator", address, "--insecure"], bound: 120)
        let (c, t, p) = (coordinator.finish(), traced.finish(), plain.finish())
        #expect(c.status == 0 && t.status == 0 && p.status == 0, "\(c.stdout.suffix(500)) \(t.stderr.suffix(500)) \(p.stderr.suffix(500))")
        let events =
            (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: trace))) as? [String: Any])?["traceEvents"]
            as? [[String: Any]] ?? []
        let spans = events.filter { $0["ph"] as? String == "X" }
        let tracks = Set(spans.compactMap { $0["tid"] as? Int })
        #expect(tracks.count == 1, "one rank's track: \(tracks)")
        // 512 samples over 2 workers of 32: 8 steps
        #expect(spans.filter { $0["name"] as? String == "optimizer" }.count == 8, "\(spans.count) spans")
    }
}

let chromium = (which("chromium") ?? which("chromium-browser"))?.path

/// `tether report` of a real run in which a worker was killed, checked in its SVG and in a browser.
@Suite(
    .serialized, .enabled(if: dataInstalled && chromium != nil, "needs Fashion-MNIST and Debian's chromium (scripts/install-deps --test)"))
struct ReportTests {
    /// The attribute `name` of every element of `kind` whose attributes contain `having`.
    static func attributes(_ html: String, _ kind: String, having: String) -> [[String: String]] {
        html.components(separatedBy: "<\(kind) ").dropFirst().map { $0.prefix { $0 != ">" } }.filter { $0.contains(having) }.map { tag in
            var out: [String: String] = [:]
            let pattern = try! NSRegularExpression(pattern: "([a-z-]+)=\"([^\"]*)\"")
            for m in pattern.matches(in: String(tag), range: NSRange(tag.startIndex..., in: tag)) {
                let t = String(tag) as NSString
                out[t.substring(with: m.range(at: 1))] = t.substring(with: m.range(at: 2))
            }
            return out
        }
    }

    @Test func theReportOfARunWithAWorkerKilledShowsItsCurvesAndTheLoss() throws {
        let dir = CLI.tempDir("report")
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = dir.appendingPathComponent("run")
        let job = try CLI.start(
            [
                "simulate", "--workers", "2", "--min-workers", "1", "--heartbeat-timeout", "1.5", "--model", "mlp-wn",
                "--train-limit", "6400", "--test-limit", "500", "--epochs", "3", "--batch", "32", "--log-every", "2",
                "--run-dir", run.path
            ], bound: 240)
        #expect(job.waitFor("epoch 1 step 40/", timeout: 120), "the job never reached step 40")
        // kill one of simulate's two workers outright
        let children =
            (try? String(contentsOfFile: "/proc/\(job.pid)/task/\(job.pid)/children", encoding: .utf8))?.split(separator: " ").compactMap {
                Int32($0)
            } ?? []
        #expect(children.count == 2, "simulate's workers: \(children)")
        if let victim = children.last { kill(victim, SIGKILL) }
        let result = job.finish()
        #expect(result.status == 0, "the job did not finish in place: \(result.stderr.suffix(2000))")

        let made = try CLI.run(["report", run.path])
        #expect(made.status == 0, "\(made.stderr)")
        let page = run.appendingPathComponent("report.html")
        let html = try String(contentsOf: page, encoding: .utf8)
        let events = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let steps = events.filter { $0["event"] as? String == "step" }, epochs = events.filter { $0["event"] as? String == "epoch" }
        // the curves hold every logged step and epoch, over the steps they span
        let loss = Self.attributes(html, "g", having: "data-series=\"training loss\"")
        #expect(loss.count == 1 && loss.first?["data-points"] == String(steps.count), "training loss: \(loss), \(steps.count) steps logged")
        #expect(
            loss.first?["data-x-min"].flatMap(Double.init) == Double(steps.first?["step"] as? Int ?? -1)
                && loss.first?["data-x-max"].flatMap(Double.init) == Double(steps.last?["step"] as? Int ?? -1),
            "loss spans \(String(describing: loss.first))")
        let losses = steps.compactMap { $0["loss"] as? Double }
        #expect(
            loss.first?["data-y-max"].flatMap(Double.init).map { abs($0 - (losses.max() ?? 0)) < 1e-9 } == true,
            "loss range: \(String(describing: loss.first))")
        let accuracy = Self.attributes(html, "g", having: "data-series=\"held-out accuracy\"")
        #expect(
            accuracy.first?["data-points"] == String(epochs.count) && epochs.count == 3, "accuracy: \(accuracy), \(epochs.count) epochs")
        // per rank stacked areas (two ranks while both lived), and the straggler table
        #expect(html.contains("rank 0: a step's time"))
        #expect(html.contains("rank 1: a step's time") && html.contains("class=\"stragglers\""))
        // the loss of the worker, marked where metrics.jsonl has it, on every time axis
        let lostStep = events.first { $0["event"] as? String == "lost" }?["step"] as? Int
        #expect(lostStep != nil, "no lost event in metrics.jsonl")
        let markers = Self.attributes(html, "g", having: "data-event=\"lost\"")
        #expect(markers.count >= 3 && markers.allSatisfy { $0["data-step"] == lostStep.map(String.init) }, "lost markers: \(markers)")
        #expect(!Self.attributes(html, "g", having: "data-event=\"reformed\"").isEmpty)
        #expect(
            !html.contains("src=") && !html.contains("href=") && !html.contains("url(") && !html.contains("@import")
                && !html.contains("<script"),
            "the page fetches or runs something")

        // and a browser renders it: the DOM holds the charts, and a screenshot is taken
        let dom = try CLI.run(
            ["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.absoluteString], timeout: 60,
            executable: URL(fileURLWithPath: chromium!))
        #expect(
            dom.stdout.components(separatedBy: "<svg class=\"chart\"").count - 1 == html.components(separatedBy: "<svg class=\"chart\"")
                .count - 1
                && dom.stdout.contains("data-event=\"lost\""), "chromium's DOM: \(dom.stdout.prefix(300)) \(dom.stderr.suffix(300))")
        let shot =
            (ProcessInfo.processInfo.environment["TETHER_REPORT_SCREENSHOT"].map { URL(fileURLWithPath: $0) })
            ?? dir.appendingPathComponent("report.png")
        _ = try CLI.run(
            [
                "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,2400", "--screenshot=\(shot.path)",
                page.absoluteString
            ],
            timeout: 60, executable: URL(fileURLWithPath: chromium!))
        let png = (try? Data(contentsOf: shot)) ?? Data()
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 50_000, "screenshot: \(png.count) bytes")
    }
}
