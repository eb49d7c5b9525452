;; Well-behaved: a partition function whose routing key is the key up to (not
;; including) its first '/'; a key without '/' routes by the whole key.
;; The output record is built in the spare byte the allocator leaves before the
;; input: [1] followed by the key's first bytes.
(module
  (memory (export "memory") 1)
  ;; Bump allocator: every allocation is 8-aligned and has 8 spare bytes
  ;; before it; memory grows as needed; nothing is ever freed (the instance
  ;; dies after the call).
  (global $heap (mut i32) (i32.const 1024))
  (func (export "ringkv_abi_version") (result i32) (i32.const 1))
  (func (export "ringkv_alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.add (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)) (i32.const 8)))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)) (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  ;; The accept record (validate) / keep-TTL / whole-key record: one 0 byte.
  (data (i32.const 16) "\00")
  (func (export "ringkv_partition") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32)
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 47))
          (then
            (i32.store8 (i32.sub (local.get $ptr) (i32.const 1)) (i32.const 1))
            (return
              (i64.or
                (i64.shl (i64.extend_i32_u (i32.sub (local.get $ptr) (i32.const 1))) (i64.const 32))
                (i64.extend_i32_u (i32.add (local.get $i) (i32.const 1)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1)))
)
