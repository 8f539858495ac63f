import Testing
@testable import TetherMessages
import TetherWire

@Suite struct EnvelopeTests {
    @Test func roundTripThroughProtobufC() throws {
        let hello = Envelope(
            jobID: "job-42", senderRank: -1,
            body: .hello(.init(advertiseAddress: "tcp://10.0.0.2:7071", tetherVersion: "0.1.0", threads: 2)))
        let bytes = hello.encoded()
        #expect(try Envelope(decoding: bytes) == hello)
        let empty = Envelope(jobID: "", senderRank: 3, body: nil)
        #expect(try Envelope(decoding: empty.encoded()) == empty)
        // the bodies without fields, each its own kind on the wire
        for body in [Envelope.Body.start, .heartbeat, .finish, .unassigned] {
            let e = Envelope(jobID: "job-42", senderRank: -1, body: body)
            #expect(try Envelope(decoding: e.encoded()) == e, "\(body)")
        }
    }

    @Test func garbageIsAnErrorNotACrash() {
        #expect(throws: WireError.self) { try Envelope(decoding: [0xFF, 0xFF, 0xFF, 0x07, 0x01]) }
        // a valid envelope cut short
        let bytes = Envelope(jobID: "job-42", senderRank: 1, body: nil).encoded()
        #expect(throws: WireError.self) { try Envelope(decoding: Array(bytes.dropLast(3))) }
    }

    /// The framing scan sizes each top-level field as the encoder wrote it (what follows its key, the
    /// length prefix included), sums a repeated field, and gives nil for framing cut short or a group.
    @Test func fieldSizesReadTheFramingAlone() throws {
        let address = String(repeating: "a", count: 300)
        let hello = Envelope(
            jobID: "job-42", senderRank: -1, body: .hello(.init(advertiseAddress: address, tetherVersion: "x", threads: 2))
        ).encoded()
        let sizes = try #require(hello.withUnsafeBytes(Envelope.fieldSizes))
        let body = try #require(sizes[Envelope.BodyField.hello.rawValue])
        #expect(sizes[2] == 1 + 6)  // the job id: its length, then 6 bytes
        #expect(body > 300 && body < 320)
        #expect(sizes.values.reduce(0, +) + sizes.count == hello.count)  // a one-byte key each
        // the same body twice (protobuf-c would unpack both): summed
        #expect(try #require((hello + hello).withUnsafeBytes(Envelope.fieldSizes))[Envelope.BodyField.hello.rawValue] == 2 * body)
        #expect(Array(hello.dropLast()).withUnsafeBytes(Envelope.fieldSizes) == nil)
        #expect([UInt8]([0x53]).withUnsafeBytes(Envelope.fieldSizes) == nil)  // field 10, start group
        #expect([UInt8]([0x52, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).withUnsafeBytes(Envelope.fieldSizes) == nil)  // a length past the end
    }

    @Test func anotherProtocolVersionIsRefusedNamingTheSender() throws {
        var e = Envelope(jobID: "j", senderRank: 5, body: nil)
        e.protocolVersion = 99
        #expect { try Envelope(decoding: e.encoded()) } throws: { "\($0)".contains("protocol version 99 from rank 5") }
    }

    @Test func stepReportsCarryTheirBytesAndSpansWithinLimits() throws {
        var report = StepReport(
            globalStep: 7, epoch: 1, lossSum: 2.5, count: 32, correct: 20, computeSeconds: 0.03,
            allreduceSeconds: 0.01, optimizerSeconds: 0.001, parameterHash: 0, waitSeconds: 0.005)
        (report.denseBytesSent, report.sparseBytesSent) = (1 << 20, 4096)
        report.spans = [
            .init(name: "forward and backward", startMicroseconds: 1_796_000_000_000_000, durationMicroseconds: 30_000),
            .init(name: "all-reduce bucket 0 (262144 values)", startMicroseconds: 1_796_000_000_010_000, durationMicroseconds: 9_000)
        ]
        let e = Envelope(jobID: "j", senderRank: 1, body: .stepReport(report))
        #expect(try Envelope(decoding: e.encoded()) == e)
        // a report with more spans than any step makes, or a name past the limit, is refused by rank
        report.spans = Array(repeating: report.spans[0], count: TraceSpan.limit + 1)
        #expect { try Envelope(decoding: Envelope(jobID: "j", senderRank: 1, body: .stepReport(report)).encoded()) } throws: {
            "\($0)".contains("from rank 1: \(TraceSpan.limit + 1) trace spans")
        }
        report.spans = [
            .init(name: String(repeating: "x", count: TraceSpan.nameLimit + 1), startMicroseconds: 0, durationMicroseconds: 0)
        ]
        #expect { try Envelope(decoding: Envelope(jobID: "j", senderRank: 1, body: .stepReport(report)).encoded()) } throws: {
            "\($0)".contains("out of range")
        }
    }

    @Test func linksTheRealProtobufC() {
        #expect(!WireFormat.libraryVersion.isEmpty)
    }
}
