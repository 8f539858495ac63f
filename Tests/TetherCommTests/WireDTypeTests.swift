import CTetherKernels
import Testing

/// The wire dtypes' conversion kernels (f32 <-> IEEE half, f32 <-> bfloat16), held to references that
/// share no code with them: the bit-arithmetic `_scalar` half conversions, Swift's own Float16, and
/// a bfloat16 rounding done in Double. Every class of f32 bit pattern: zeros, normals, f32 and f16
/// subnormals, the overflow boundary, exact ties (either parity), infinities and NaNs.
@Suite struct WireDTypeTests {
    /// f32 bit patterns of every class, and a million random ones.
    static let patterns: [UInt32] = {
        var p: [UInt32] = [
            0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0xffc0_0001, 0x7f80_0001, 0x7fbf_ffff, 0x0000_0001, 0x007f_ffff,
            0x477f_e000, 0x477f_efff, 0x477f_f000, 0x477f_f001, 0x4780_0000, 0x7f7f_ffff, 0x3300_0000, 0x3300_0001, 0x337f_ffff,
            0x3880_0000, 0x387f_ffff, 0x3f80_0000, 0xbf80_0000
        ]
        // ties and their neighbours for every f16 exponent, normal and subnormal, both parities
        for e in UInt32(102)...142 {
            for m in [UInt32(0x1000), 0x3000, 0x0fff, 0x1001, 0x2fff, 0x3001, 0x7f_f000, 0x7f_e000, 0x40_1000, 0x40_3000] {
                p += [e << 23 | m, 0x8000_0000 | e << 23 | m]
            }
        }
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        for _ in 0..<1_000_000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            p.append(UInt32(truncatingIfNeeded: state >> 32))
        }
        return p
    }()

    /// bfloat16 by Double arithmetic: the nearer of the two bfloat16 values around x, ties to even.
    static func bf16Reference(_ bits: UInt32) -> UInt16 {
        let x = Float(bitPattern: bits)
        if x.isNaN { return UInt16(bits >> 16) | 0x0040 }
        if x.isInfinite { return UInt16(bits >> 16) }
        // the bfloat16 values either side of x in magnitude; above the largest, infinity counts as
        // 2^128 (IEEE: a value at least half an ulp past the largest finite one overflows)
        let down = bits & 0xffff_0000, up = down &+ 0x1_0000
        func value(_ b: UInt32) -> Double {
            b & 0x7f80_0000 == 0x7f80_0000 ? (b >> 31 == 1 ? -0x1p128 : 0x1p128) : Double(Float(bitPattern: b))
        }
        let (toDown, toUp) = (abs(Double(x) - value(down)), abs(value(up) - Double(x)))
        if toDown < toUp || (toDown == toUp && (down >> 16) & 1 == 0) { return UInt16(down >> 16) }
        return UInt16(up >> 16)
    }

    @Test func halfNarrowsWithRoundToNearestEven() {
        let xs = Self.patterns.map { Float(bitPattern: $0) }
        var kernel = [UInt16](repeating: 0, count: xs.count)
        tether_f32_to_f16(&kernel, xs, xs.count)
        var bad: [String] = []
        for (i, x) in xs.enumerated() {
            let reference = tether_f32_to_f16_scalar(x)
            let swift = Float16(x).bitPattern
            // a NaN stays a NaN of the same sign (payloads are the hardware's business), else equal bits
            let agree =
                x.isNaN
                ? (Float16(bitPattern: kernel[i]).isNaN && Float16(bitPattern: reference).isNaN && Float16(bitPattern: swift).isNaN
                    && kernel[i] & 0x8000 == reference & 0x8000 && kernel[i] == reference)
                : kernel[i] == reference && reference == swift
            if !agree, bad.count < 5 {
                bad.append(
                    "f32 \(String(Self.patterns[i], radix: 16)): kernel \(String(kernel[i], radix: 16)), reference \(String(reference, radix: 16)), Swift \(String(swift, radix: 16))"
                )
            }
        }
        #expect(bad.isEmpty, "\(bad)")
        // the boundaries by value: 65504 is the largest half, 65520 rounds to infinity, 2^-25 to zero
        #expect(tether_f32_to_f16_scalar(65519.996) == 0x7bff && tether_f32_to_f16_scalar(65520) == 0x7c00)
        #expect(tether_f32_to_f16_scalar(0x1p-25) == 0 && tether_f32_to_f16_scalar(0x1.000002p-25) == 1)
    }

    @Test func halfWidensExactlyAndAddsInF32() {
        let all = (0...UInt16.max).map { $0 }
        var wide = [Float](repeating: 0, count: all.count)
        tether_f16_to_f32(&wide, all, all.count)
        for h in all {
            let (k, r, s) = (wide[Int(h)], tether_f16_to_f32_scalar(h), Float(Float16(bitPattern: h)))
            if s.isNaN {
                #expect(k.isNaN && r.isNaN && k.bitPattern == r.bitPattern, "half \(String(h, radix: 16))")
            } else {
                #expect(k.bitPattern == r.bitPattern && r.bitPattern == s.bitPattern, "half \(String(h, radix: 16))")
            }
            // narrowing what was widened gives the half back
            if !s.isNaN { #expect(tether_f32_to_f16_scalar(r) == h) }
        }
        var y = (0..<all.count).map { Float($0 % 97) * 0.25 }
        let y0 = y
        tether_add_f16_to_f32(&y, all, all.count)
        for i in all.indices where !wide[i].isNaN { #expect(y[i].bitPattern == (y0[i] + wide[i]).bitPattern) }
    }

    @Test func bfloat16RoundsToNearestEvenAndWidensExactly() {
        let xs = Self.patterns.map { Float(bitPattern: $0) }
        var narrow = [UInt16](repeating: 0, count: xs.count)
        tether_f32_to_bf16(&narrow, xs, xs.count)
        var bad: [String] = []
        for (i, bits) in Self.patterns.enumerated() where narrow[i] != Self.bf16Reference(bits) && bad.count < 5 {
            bad.append(
                "f32 \(String(bits, radix: 16)): kernel \(String(narrow[i], radix: 16)), reference \(String(Self.bf16Reference(bits), radix: 16))"
            )
        }
        #expect(bad.isEmpty, "\(bad)")
        #expect(Self.bf16Reference(0x7f7f_ffff) == 0x7f80, "the largest f32 rounds to infinity")
        var wide = [Float](repeating: 0, count: xs.count)
        tether_bf16_to_f32(&wide, narrow, narrow.count)
        for i in xs.indices { #expect(wide[i].bitPattern == UInt32(narrow[i]) << 16) }
        var y = [Float](repeating: 1, count: xs.count)
        tether_add_bf16_to_f32(&y, narrow, narrow.count)
        for i in xs.indices where !wide[i].isNaN { #expect(y[i].bitPattern == (1 + wide[i]).bitPattern) }
    }
}
