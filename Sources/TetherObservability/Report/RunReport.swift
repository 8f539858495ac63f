import Foundation
import TetherTrain

/// `tether report`: one self-contained HTML page (inline SVG and CSS, nothing fetched) of one or
/// more run directories, from their metrics.jsonl (and checkpoint's settings): loss and the model's
/// held-out metric, throughput, per rank where a step's time goes, the straggler table, bytes moved,
/// the job's events on every time axis, and each run's settings and ranks. Several runs overlay their
/// curves, one colour per run.
public enum RunReport {
    /// One run directory's record.
    public struct Run {
        public var name: String
        public var events: [MetricsEvent]
        public var config: TrainingConfig?
        /// A note on what could not be read (a metrics line cut short by a crash).
        public var notes: [String] = []
    }

    /// Reads `directory`'s metrics.jsonl (every line must be an event, but a last line cut short,
    /// which a crash leaves, is noted and skipped) and its checkpoint's settings, if it has one.
    public static func load(_ directory: URL) throws -> Run {
        let file = directory.appendingPathComponent(RunDirectory.metricsFileName)
        let data: Data
        do { data = try Data(contentsOf: file) } catch {
            throw ConfigError(message: "\(file.path): cannot read the run's metrics (is \(directory.path) a run directory?)")
        }
        var run = Run(name: directory.standardizedFileURL.lastPathComponent, events: [], config: nil)
        let lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() where !line.isEmpty {
            do { run.events.append(try JSONDecoder().decode(MetricsEvent.self, from: Data(line))) } catch {
                guard i == lines.count - 1 else {
                    throw ConfigError(
                        message: "\(file.path), line \(i + 1): not a metrics event (\(String(decoding: line.prefix(80), as: UTF8.self)))")
                }
                run.notes.append("the last line of metrics.jsonl was cut short (the run stopped while writing it) and is left out")
            }
        }
        guard !run.events.isEmpty else { throw ConfigError(message: "\(file.path): no events (the run has not started)") }
        run.config = (try? Checkpoint.Loaded(directory.appendingPathComponent(Checkpoint.fileName)))?.config
        return run
    }

    // MARK: the page

    public static func html(_ runs: [Run], generated: Date = Date()) -> String {
        let overlay = runs.count > 1
        func color(_ run: Int, _ k: Int = 0) -> String { SVGChart.palette[(overlay ? run : k) % SVGChart.palette.count] }
        func name(_ run: Int, _ what: String) -> String { overlay ? "\(runs[run].name): \(what)" : what }
        func steps(_ r: Run) -> [MetricsEvent] { r.events.filter { $0.event == "step" } }
        func evaluations(_ r: Run) -> [MetricsEvent] { r.events.filter { $0.event == "epoch" || $0.event == "eval" } }
        let markers = runs.enumerated().flatMap { i, r in Self.markers(r, color: overlay ? color(i) : nil) }

        var body = ""
        // loss
        var loss: [SVGChart.Series] = []
        for (i, r) in runs.enumerated() {
            loss.append(
                .init(
                    name: name(i, "training loss"), points: steps(r).compactMap { e in e.loss.map { (Double(e.step), $0) } },
                    color: color(i, 0)))
            loss.append(
                .init(
                    name: name(i, "held-out loss"), points: evaluations(r).compactMap { e in e.test_loss.map { (Double(e.step), $0) } },
                    color: color(i, 1), dashed: true, dots: true))
        }
        body += section("Loss", SVGChart(title: "Loss", xLabel: "global step", yLabel: "mean loss", series: loss, markers: markers).svg)
        // the model's metric
        var metric: [SVGChart.Series] = [], metricName = "accuracy (%)"
        for (i, r) in runs.enumerated() {
            let evals = evaluations(r)
            if evals.contains(where: { $0.test_accuracy != nil }) {
                metric.append(
                    .init(
                        name: name(i, "held-out accuracy"),
                        points: evals.compactMap { e in e.test_accuracy.map { (Double(e.step), $0 * 100) } },
                        color: color(i, 2), dots: true))
            } else if evals.contains(where: { $0.test_auc != nil }) {
                metricName = "AUC"
                metric.append(
                    .init(
                        name: name(i, "held-out AUC"), points: evals.compactMap { e in e.test_auc.map { (Double(e.step), $0) } },
                        color: color(i, 2), dots: true))
            } else if evals.contains(where: { $0.test_rmse != nil }) {
                metricName = "RMSE"
                metric.append(
                    .init(
                        name: name(i, "held-out RMSE"), points: evals.compactMap { e in e.test_rmse.map { (Double(e.step), $0) } },
                        color: color(i, 2), dots: true))
            } else if evals.contains(where: { $0.test_perplexity != nil }) {
                metricName = "perplexity"
                metric.append(
                    .init(
                        name: name(i, "held-out perplexity"),
                        points: evals.compactMap { e in e.test_perplexity.map { (Double(e.step), $0) } },
                        color: color(i, 2), dots: true))
            }
        }
        if !metric.isEmpty {
            body += section(
                "Held-out \(metricName)",
                SVGChart(
                    title: "Held-out \(metricName) after each epoch", xLabel: "global step", yLabel: metricName,
                    series: metric, markers: markers, fromZero: false
                ).svg)
        }
        // throughput
        let rate = runs.enumerated().map { i, r in
            SVGChart.Series(
                name: name(i, "\((r.config.flatMap { try? ModelFamily.named($0.model) })?.unit ?? "samples")/s"),
                points: steps(r).compactMap { e in e.samples_per_sec.map { (Double(e.step), $0) } }, color: color(i, 0))
        }
        body += section(
            "Throughput",
            SVGChart(
                title: "Throughput over the last --log-every steps", xLabel: "global step", yLabel: "samples (tokens) per second",
                series: rate, markers: markers
            ).svg)
        // per rank: where a step's time goes; the stragglers; bytes
        for (i, r) in runs.enumerated() where steps(r).contains(where: { $0.compute_s != nil }) {
            let s = steps(r), ranks = s.map { $0.compute_s?.count ?? 0 }.max() ?? 0
            var charts = ""
            for rank in 0..<ranks {
                func part(_ f: (MetricsEvent) -> Double?) -> [(x: Double, y: Double)] {
                    s.compactMap { e in f(e).map { (Double(e.step), $0 * 1000) } }
                }
                let compute = part { $0.compute_s?[safe: rank] }
                let exchanging = part { e in e.allreduce_s?[safe: rank].map { $0 - (e.wait_s?[safe: rank] ?? 0) } }
                let waiting = part { $0.wait_s?[safe: rank] }
                charts +=
                    SVGChart(
                        title: (overlay ? "\(r.name), " : "") + "rank \(rank): a step's time", xLabel: "global step",
                        yLabel: "milliseconds",
                        series: [
                            .init(name: "compute (forward, backward)", points: compute, color: "#4c72b0"),
                            .init(name: "exchange after backward", points: exchanging, color: "#dd8452"),
                            .init(name: "waiting for a neighbour", points: waiting, color: "#c44e52")
                        ],
                        markers: Self.markers(r, color: nil), stacked: true, width: 620, height: 230
                    ).svg
            }
            body += section((overlay ? "\(r.name): " : "") + "Where each rank's step goes", charts + stragglers(s), wide: true)
            let bytes: [SVGChart.Series] = [
                .init(
                    name: "dense" + compressionNote(r.config),
                    points: s.compactMap { e in e.dense_bytes.map { (Double(e.step), $0.reduce(0, +) / 1e6) } }, color: color(i, 0)),
                .init(
                    name: "sparse rows", points: s.compactMap { e in e.sparse_bytes.map { (Double(e.step), $0.reduce(0, +) / 1e6) } },
                    color: color(i, 3))
            ].filter { $0.points.contains { $0.y > 0 } }
            if !bytes.isEmpty {
                body += section(
                    (overlay ? "\(r.name): " : "") + "Bytes moved",
                    SVGChart(
                        title: "Payload bytes sent per step, all ranks", xLabel: "global step", yLabel: "MB", series: bytes,
                        markers: Self.markers(r, color: nil)
                    ).svg)
            }
        }
        body += section("Events", eventsTable(runs), wide: true)
        body += section("Runs", settingsTable(runs), wide: true)
        let notes = runs.flatMap { r in r.notes.map { "\(r.name): \($0)" } }
        let title = "Tether report: " + runs.map(\.name).joined(separator: ", ")
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>\(SVGChart.escaped(title))</title>
            <style>
            body { font: 14px/1.4 -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 24px; color: #222; max-width: 1400px; }
            h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
            .sub { color: #666; margin-bottom: 16px; }
            section { display: inline-block; vertical-align: top; margin-right: 24px; } section.wide, section.table { display: block; }
            section.wide svg { margin-right: 8px; }
            svg.chart { font-size: 11px; background: #fff; }
            svg .title { font-size: 13px; font-weight: 600; } svg .plot { fill: #fafafa; stroke: #bbb; }
            svg .grid { stroke: #e4e4e4; } svg .axis { stroke: #888; } svg .tick { fill: #555; } svg .axis-label { fill: #333; font-size: 12px; }
            svg .legend-ground { fill: #fff; fill-opacity: 0.85; stroke: #ddd; } svg .event-label { font-size: 10px; }
            table { border-collapse: collapse; margin: 6px 0 12px; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
            th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
            .note { color: #a33; }
            </style></head><body>
            <h1>\(SVGChart.escaped(title))</h1>
            <div class="sub">\(runs.count == 1 ? "1 run" : "\(runs.count) runs overlaid, one colour each"); made \(ISO8601DateFormatter().string(from: generated))</div>
            \(notes.map { "<p class=\"note\">\(SVGChart.escaped($0))</p>" }.joined())
            \(body)
            </body></html>

            """
    }

    static func section(_ title: String, _ content: String, wide: Bool = false) -> String {
        "<section\(wide ? " class=\"wide\"" : "")><h2>\(SVGChart.escaped(title))</h2>\n\(content)</section>\n"
    }

    static func compressionNote(_ config: TrainingConfig?) -> String {
        guard let config else { return "" }
        switch config.resolvedCompression {
        case .none: return ""
        case .powersgd: return " (PowerSGD rank \(config.resolvedPowerSGDRank))"
        case let c: return " (\(c.rawValue))"
        }
    }

    /// The events a user looks for on a time axis: a worker lost or joining, a re-formation, a
    /// failure, an interrupt, and a run that started again (resumed, or restarted after a failure).
    static func markers(_ run: Run, color: String?) -> [SVGChart.Marker] {
        var out: [SVGChart.Marker] = []
        var started = false
        for e in run.events {
            let kind: String?
            switch e.event {
            case "lost": kind = "worker lost"
            case "joined": kind = "worker joins"
            case "reformed": kind = "re-formed"
            case "failed": kind = "failed"
            case "interrupted": kind = "interrupted"
            case "checkpoint": kind = "checkpoint"
            case "start":
                kind = started ? (run.events.last { $0.step <= e.step && $0.event == "failed" } != nil ? "restarted" : "resumed") : nil;
                started = true
            default: kind = nil
            }
            guard let kind else { continue }
            let key = e.event == "start" ? kind : e.event
            out.append(.init(x: Double(e.step), label: kind, kind: key, color: color ?? SVGChart.eventColors[key] ?? "#555"))
        }
        return out
    }

    /// Which rank was slowest (longest compute) in how many logged steps, and by how much. Ranks are
    /// numbered as in each step (a re-formation renumbers the survivors).
    static func stragglers(_ steps: [MetricsEvent]) -> String {
        // the steps with more than one rank (after losses, a lone survivor is nobody's straggler)
        let computes = steps.compactMap(\.compute_s).filter { $0.count > 1 }
        guard let ranks = computes.map(\.count).max(), ranks > 1 else { return "" }
        var slowest = Array(repeating: 0, count: ranks), behind = Array(repeating: 0.0, count: ranks),
            mean = Array(repeating: 0.0, count: ranks)
        var counted = Array(repeating: 0, count: ranks)
        for c in computes {
            guard let top = c.indices.max(by: { c[$0] < c[$1] }), let fastest = c.min() else { continue }
            slowest[top] += 1
            behind[top] += c[top] - fastest
            for (r, v) in c.enumerated() { mean[r] += v; counted[r] += 1 }
        }
        var rows = ""
        for r in 0..<ranks {
            let m = counted[r] > 0 ? mean[r] / Double(counted[r]) * 1000 : 0
            let by = slowest[r] > 0 ? behind[r] / Double(slowest[r]) * 1000 : 0
            rows +=
                "<tr><td>rank \(r)</td><td class=\"num\">\(slowest[r]) of \(computes.count) (\(Int((Double(slowest[r]) / Double(computes.count) * 100).rounded()))%)</td>"
                + "<td class=\"num\">\(SVGChart.trimmed(m)) ms</td><td class=\"num\">\(slowest[r] > 0 ? "+" + SVGChart.trimmed(by) + " ms" : "")</td></tr>\n"
        }
        return "<table class=\"stragglers\"><caption>The straggler view: which rank computed longest in the logged steps</caption>"
            + "<tr><th>rank</th><th>slowest in</th><th>mean compute</th><th>behind the fastest, when slowest</th></tr>\n\(rows)</table>\n"
    }

    static func eventsTable(_ runs: [Run]) -> String {
        var rows = ""
        for r in runs {
            for e in r.events where !["step", "epoch", "eval", "checkpoint"].contains(e.event) {
                var what = e.error ?? ""
                if let w = e.workers { what += (what.isEmpty ? "" : "; ") + "\(w) workers" }
                if let s = e.elapsed_s { what += (what.isEmpty ? "" : "; ") + "\(SVGChart.trimmed(s)) s" }
                if let redone = e.steps_redone { what += "; \(redone) step\(redone == 1 ? "" : "s") redone" }
                rows +=
                    "<tr class=\"event-row\" data-event=\"\(SVGChart.escaped(e.event))\"><td>\(SVGChart.escaped(r.name))</td><td>\(SVGChart.escaped(e.event))</td>"
                    + "<td class=\"num\">\(e.step)</td><td class=\"num\">\(e.epoch)</td><td>\(SVGChart.escaped(String(what.prefix(300))))</td></tr>\n"
            }
        }
        return "<table><tr><th>run</th><th>event</th><th>step</th><th>epoch</th><th>detail</th></tr>\n\(rows)</table>\n"
    }

    static func settingsTable(_ runs: [Run]) -> String {
        var out = ""
        for r in runs {
            let start = r.events.first { $0.event == "start" }
            let lastEval = r.events.last { $0.event == "epoch" || $0.event == "eval" }
            var rows: [(String, String)] = [("model", start?.model ?? r.config?.model ?? "?")]
            if let p = start?.parameters { rows.append(("parameters", p.formatted())) }
            rows.append(("processes", start?.workers.map { "\($0) workers" } ?? "1 (tether train)"))
            if let c = r.config {
                rows.append(("batch", c.globalBatch.map { "\($0) global" } ?? "\(c.batch) per process"))
                rows.append(
                    ("optimizer", "\(c.optimizer.kind.rawValue), learning rate \(c.schedule.baseLR) (\(c.schedule.kind.rawValue) schedule)")
                )
                rows.append(("epochs", "\(c.epochs)" + (c.maxSteps.map { ", at most \($0) steps" } ?? "")))
                rows.append(("data", c.data + (c.trainLimit.map { ", first \($0) training samples" } ?? "")))
                rows.append(("gradients on the wire", c.compression.map { "\($0.rawValue)" + compressionNote(c) } ?? "f32"))
                rows.append(("seed", "\(c.seed)"))
            }
            if let e = lastEval {
                let metric =
                    e.test_accuracy.map { String(format: "%.2f%% accuracy", $0 * 100) } ?? e.test_auc.map { String(format: "AUC %.4f", $0) }
                    ?? e.test_perplexity.map { String(format: "perplexity %.2f", $0) }
                    ?? e.test_rmse.map { String(format: "RMSE %.4f, MAE %.4f", $0, e.test_mae ?? .nan) } ?? ""
                rows.append(
                    ("last evaluation", "step \(e.step): \(metric)" + (e.test_loss.map { String(format: ", loss %.4f", $0) } ?? "")))
            }
            let checkpoints = r.events.filter { $0.event == "checkpoint" }
            if let last = checkpoints.last {
                rows.append(("checkpoints", "\(checkpoints.count) written (▲ on the step axes), the last of step \(last.step)"))
            }
            if let end = r.events.last(where: { ["end", "failed", "interrupted"].contains($0.event) }) {
                rows.append(
                    ("ended", "\(end.event) at step \(end.step)" + (end.elapsed_s.map { " after \(SVGChart.trimmed($0)) s" } ?? "")))
            }
            out +=
                "<table class=\"settings\"><caption>\(SVGChart.escaped(r.name))</caption>"
                + rows.map { "<tr><th>\(SVGChart.escaped($0.0))</th><td>\(SVGChart.escaped($0.1))</td></tr>" }.joined(separator: "\n")
                + "</table>\n"
            let hosts = r.events.filter { $0.ranks != nil }
            if let last = hosts.last?.ranks {
                out +=
                    "<table class=\"ranks\"><caption>\(SVGChart.escaped(r.name)): the ranks at step \(hosts.last!.step)</caption><tr><th>rank</th><th>advertised address (its host)</th><th>compute threads</th></tr>"
                    + last.enumerated().map { rank, address in
                        let threads = hosts.last!.rank_threads?[safe: rank].map { $0 > 0 ? "\($0)" : "all cores" } ?? "?"
                        return "<tr><td>\(rank)</td><td>\(SVGChart.escaped(address))</td><td class=\"num\">\(threads)</td></tr>"
                    }.joined(
                        separator: "\n") + "</table>\n"
            }
        }
        return out
    }
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}
