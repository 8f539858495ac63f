import Testing
@testable import TetherComm
import TetherWire

@Suite struct EnvelopeTests {
    @Test func roundTripThroughProtobufC() throws {
        let hello = Envelope(jobID: "job-42", senderRank: -1,
                             body: .hello(.init(advertiseAddress: "tcp://10.0.0.2:7071", tetherVersion: "0.1.0", threads: 2)))
        let bytes = hello.encoded()
        #expect(try Envelope(decoding: bytes) == hello)
        let empty = Envelope(jobID: "", senderRank: 3, body: nil)
        #expect(try Envelope(decoding: empty.encoded()) == empty)
    }

    @Test func garbageIsAnErrorNotACrash() {
        #expect(throws: WireError.self) { try Envelope(decoding: [0xFF, 0xFF, 0xFF, 0x07, 0x01]) }
        // a valid envelope cut short
        let bytes = Envelope(jobID: "job-42", senderRank: 1, body: nil).encoded()
        #expect(throws: WireError.self) { try Envelope(decoding: Array(bytes.dropLast(3))) }
    }

    @Test func anotherProtocolVersionIsRefusedNamingTheSender() throws {
        var e = Envelope(jobID: "j", senderRank: 5, body: nil)
        e.protocolVersion = 99
        #expect { try Envelope(decoding: e.encoded()) } throws: { "\($0)".contains("protocol version 99 from rank 5") }
    }

    @Test func linksTheRealLibraries() {
        #expect(ZeroMQ.version.hasPrefix("4."))
        #expect(!WireFormat.libraryVersion.isEmpty)
    }
}
