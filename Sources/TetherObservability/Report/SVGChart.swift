import Foundation
import TetherTrain

/// A line or stacked-area chart as inline SVG: titled, labelled axes with round ticks, a legend, and
/// the run's events as marked vertical lines. Each series and marker carries its data in attributes
/// (`data-series`, `data-points`, `data-x-min`...), so what a page shows can be checked without pixels.
struct SVGChart {
    struct Series {
        var name: String
        var points: [(x: Double, y: Double)]
        var color: String
        var dashed = false
        /// Drawn as dots (few points: an epoch's evaluations) rather than only a line.
        var dots = false
    }
    struct Marker {
        var x: Double
        var label: String
        var kind: String
        var color: String
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series]
    var markers: [Marker] = []
    /// The series stack (areas, each on the ones before it), as a step's time split into parts.
    var stacked = false
    /// The y axis starts at 0 (amounts), or near the data (accuracy).
    var fromZero = true
    var width = 680.0, height = 270.0

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    static let eventColors = [
        "lost": "#d62728", "failed": "#d62728", "reformed": "#2ca02c", "joined": "#1f77b4", "interrupted": "#ff7f0e",
        "resumed": "#9467bd", "restarted": "#9467bd"
    ]

    /// Round tick values covering lo...hi (about `count` of them).
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
        let raw = (hi - lo) / Double(count), magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
        var out: [Double] = []
        var t = (lo / step).rounded(.down) * step
        while t <= hi + step * 1e-9 { if t >= lo - step * 1e-9 { out.append(t) }; t += step }
        return out
    }

    static func label(_ v: Double) -> String {
        let a = abs(v)
        if a >= 1e9 { return trimmed(v / 1e9) + "G" }
        if a >= 1e6 { return trimmed(v / 1e6) + "M" }
        if a >= 1e4 { return trimmed(v / 1e3) + "k" }
        return trimmed(v)
    }

    static func trimmed(_ v: Double) -> String {
        var s = String(format: abs(v) >= 100 || v == v.rounded() ? "%.0f" : abs(v) >= 1 ? "%.2f" : "%.3g", v)
        if s.contains("."), !s.contains("e") { while s.hasSuffix("0") { s.removeLast() }; if s.hasSuffix(".") { s.removeLast() } }
        return s
    }

    static func escaped(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
            of: ">", with: "&gt;"
        )
        .replacingOccurrences(of: "\"", with: "&quot;")
    }

    var svg: String {
        // the legend sits right of the plot
        let (left, right, top, bottom) = (64.0, 200.0, 34.0, 46.0)
        let plotW = width - left - right, plotH = height - top - bottom
        // the stacked totals, where a stack is drawn
        var drawn = series.map { $0.points.filter { $0.x.isFinite && $0.y.isFinite } }
        if stacked {
            for i in drawn.indices.dropFirst() {
                drawn[i] = zip(drawn[i], drawn[i - 1]).map { ($0.x, $0.y + $1.y) }
            }
        }
        let all = drawn.flatMap { $0 }
        let xs = all.map(\.x) + markers.map(\.x), ys = all.map(\.y)
        var (x0, x1) = (xs.min() ?? 0, xs.max() ?? 1)
        var (y0, y1) = (ys.min() ?? 0, ys.max() ?? 1)
        if x1 <= x0 { (x0, x1) = (x0 - 1, x0 + 1) }
        if y1 <= y0 { (y0, y1) = (y0 - max(abs(y0) * 0.1, 0.5), y1 + max(abs(y1) * 0.1, 0.5)) }
        y1 += (y1 - y0) * 0.06  // headroom: a flat series is not drawn on the frame
        y0 = fromZero ? min(0, y0) : y0 - (y1 - y0) * 0.06
        let yTicks = Self.ticks(y0, y1), xTicks = Self.ticks(x0, x1)
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * plotW }
        func py(_ y: Double) -> Double { top + plotH - (y - y0) / (y1 - y0) * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var out =
            "<svg class=\"chart\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" data-title=\"\(Self.escaped(title))\" role=\"img\" aria-label=\"\(Self.escaped(title))\">\n"
        out += "<text x=\"\(f(left))\" y=\"20\" class=\"title\">\(Self.escaped(title))</text>\n"
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" class=\"plot\"/>\n"
        for t in yTicks {
            out += "<line x1=\"\(f(left))\" x2=\"\(f(left + plotW))\" y1=\"\(f(py(t)))\" y2=\"\(f(py(t)))\" class=\"grid\"/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(py(t) + 4))\" class=\"tick\" text-anchor=\"end\">\(Self.label(t))</text>\n"
        }
        for t in xTicks {
            out += "<line x1=\"\(f(px(t)))\" x2=\"\(f(px(t)))\" y1=\"\(f(top + plotH))\" y2=\"\(f(top + plotH + 4))\" class=\"axis\"/>"
            out += "<text x=\"\(f(px(t)))\" y=\"\(f(top + plotH + 17))\" class=\"tick\" text-anchor=\"middle\">\(Self.label(t))</text>\n"
        }
        out +=
            "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 6))\" class=\"axis-label\" text-anchor=\"middle\">\(Self.escaped(xLabel))</text>\n"
        out +=
            "<text transform=\"translate(14 \(f(top + plotH / 2))) rotate(-90)\" class=\"axis-label\" text-anchor=\"middle\">\(Self.escaped(yLabel))</text>\n"
        for (i, s) in series.enumerated() {
            let points = drawn[i]
            let data =
                "data-series=\"\(Self.escaped(s.name))\" data-points=\"\(points.count)\""
                + (points.isEmpty
                    ? ""
                    : " data-x-min=\"\(points.map(\.x).min()!)\" data-x-max=\"\(points.map(\.x).max()!)\""
                        + " data-y-min=\"\(s.points.map(\.y).filter(\.isFinite).min() ?? 0)\" data-y-max=\"\(s.points.map(\.y).filter(\.isFinite).max() ?? 0)\"")
            let path = points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            if stacked {
                let below = i == 0 ? points.map { ($0.x, y0) } : drawn[i - 1]
                let back = below.reversed().map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
                out +=
                    "<polygon class=\"series area\" \(data) points=\"\(path) \(back)\" fill=\"\(s.color)\" fill-opacity=\"0.75\" stroke=\"none\"/>\n"
            } else {
                out +=
                    "<g class=\"series\" \(data)><polyline points=\"\(path)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"1.6\""
                    + (s.dashed ? " stroke-dasharray=\"5 3\"" : "") + "/>"
                if s.dots || points.count == 1 {
                    for p in points { out += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3\" fill=\"\(s.color)\"/>" }
                }
                out += "</g>\n"
            }
        }
        // checkpoints: a small mark under the axis (there may be one an epoch, or every few steps)
        for m in markers where m.kind == "checkpoint" {
            let x = px(m.x), y = top + plotH
            out +=
                "<g class=\"event\" data-event=\"checkpoint\" data-step=\"\(Self.trimmed(m.x))\"><title>checkpoint of step \(Self.trimmed(m.x))</title>"
                + "<polygon points=\"\(f(x)),\(f(y - 6)) \(f(x - 4)),\(f(y)) \(f(x + 4)),\(f(y))\" fill=\"#777\"/></g>\n"
        }
        let markers = markers.filter { $0.kind != "checkpoint" }
        for (i, m) in markers.enumerated() {
            // labels of nearby events step down, so that they do not overprint
            let row = Double(markers[..<i].filter { abs(px($0.x) - px(m.x)) < 70 }.count % 4)
            out +=
                "<g class=\"event\" data-event=\"\(Self.escaped(m.kind))\" data-step=\"\(Self.trimmed(m.x))\"><line x1=\"\(f(px(m.x)))\" x2=\"\(f(px(m.x)))\" "
                + "y1=\"\(f(top))\" y2=\"\(f(top + plotH))\" stroke=\"\(m.color)\" stroke-dasharray=\"3 3\"/>"
                + "<text x=\"\(f(px(m.x) + 3))\" y=\"\(f(top + 11 + row * 11))\" class=\"event-label\" fill=\"\(m.color)\">\(Self.escaped(m.label))</text></g>\n"
        }
        // the legend, right of the plot: a swatch drawn as the series is (area, line, dashed line)
        for (i, s) in series.enumerated() {
            let (x, y) = (left + plotW + 10, top + 8 + Double(i) * 15)
            out +=
                stacked
                ? "<rect x=\"\(f(x))\" y=\"\(f(y - 5))\" width=\"14\" height=\"10\" fill=\"\(s.color)\" fill-opacity=\"0.75\"/>"
                : "<line x1=\"\(f(x))\" x2=\"\(f(x + 14))\" y1=\"\(f(y))\" y2=\"\(f(y))\" stroke=\"\(s.color)\" stroke-width=\"2\""
                    + (s.dashed ? " stroke-dasharray=\"4 2\"" : "") + "/>"
            out += "<text x=\"\(f(x + 19))\" y=\"\(f(y + 4))\" class=\"legend\">\(Self.escaped(String(s.name.prefix(30))))</text>\n"
        }
        return out + "</svg>\n"
    }
}
