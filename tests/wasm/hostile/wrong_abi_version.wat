;; Hostile: otherwise fine, but ringkv_abi_version returns 3 (a module built
;; for a hook ABI this host does not speak). Deploy must refuse it.
(module
  (memory (export "memory") 1)
  ;; Bump allocator: every allocation is 8-aligned and has 8 spare bytes
  ;; before it; memory grows as needed; nothing is ever freed (the instance
  ;; dies after the call).
  (global $heap (mut i32) (i32.const 1024))
  (func (export "ringkv_abi_version") (result i32) (i32.const 3))
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
  (func (export "ringkv_validate") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1)))
)
