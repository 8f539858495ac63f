import Foundation
import Testing
import TetherData
@testable import TetherTrain

/// Wrong numbers are not shown as fine: NaN is written as null in metrics.jsonl, and a table whose
/// rows all have one label is refused before it trains to "AUC nan, accuracy 100%".
@Suite struct HonestOutputTests {
    @Test func notANumberIsWrittenAsNull() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tether-metrics-\(UUID()).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        var e = MetricsEvent(event: "epoch", step: 1, stepsPerEpoch: 1)
        (e.loss, e.samples_per_sec) = (.nan, .infinity)
        try MetricsLog(path: path).write(e)
        let line = try String(contentsOfFile: path, encoding: .utf8)
        #expect(line.contains("\"loss\":null") && line.contains("\"samples_per_sec\":null") && !line.contains("nan"), "\(line)")
        #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil)
    }

    @Test func aTableWithOneClassIsRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-one-class-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let csv = dir.appendingPathComponent("t.csv"), schema = dir.appendingPathComponent("t.schema")
        try (0..<40).map { "a\($0 % 3),\($0),no" }.joined(separator: "\n").write(to: csv, atomically: true, encoding: .utf8)
        try "columns a, b, y\ncategorical a\nnumeric b\nlabel y yes\n".write(to: schema, atomically: true, encoding: .utf8)
        #expect { try DataSource.tabular("csv:\(csv.path)", schema: TabularSchema.load(schema.path), seed: 1) } throws: {
            "\($0)".contains("every training row has label 0; a click model needs both classes")
        }
    }
}
