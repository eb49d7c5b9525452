//! The `json` library of Lua hooks: `json.encode`, `json.decode` and
//! `json.null`, converting between Luau values and JSON text with
//! serde_json. Decoding builds Luau values straight from the parser, inside
//! the VM's memory accounting; encoding stops before its text outgrows what
//! the VM could still hold. Tables nested deeper than [`MAX_DEPTH`] (or
//! cyclic ones) are refused.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;

use mlua::{Lua, LuaSerdeExt, Table, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use super::{located, CallState};

/// Deepest table nesting `json.encode` and `json.decode` accept. It also
/// bounds the Rust stack the conversion uses, and catches cyclic tables.
const MAX_DEPTH: usize = 128;

pub(super) fn library(lua: &Lua, state: &Rc<CallState>) -> mlua::Result<Table> {
    let json = lua.create_table()?;
    let state = Rc::clone(state);
    json.raw_set("encode", lua.create_function(move |lua, value: Value| encode(lua, &state, value))?)?;
    json.raw_set("decode", lua.create_function(|lua, text: Value| decode(lua, text))?)?;
    json.raw_set("null", lua.null())?;
    Ok(json)
}

fn encode(lua: &Lua, state: &CallState, value: Value) -> mlua::Result<mlua::String> {
    // The text is built outside the VM's accounting; it may not grow past
    // what the VM could still hold (a table holding one big string many
    // times would otherwise make gigabytes).
    let room = state.memory_limit.get().saturating_sub(lua.used_memory());
    let mut out = Capped { buf: Vec::new(), room };
    let array_mt = lua.array_metatable();
    let encoded =
        Json { value: &value, depth: 0, array_mt: &array_mt }.serialize(&mut serde_json::Serializer::new(&mut out));
    match encoded {
        Ok(()) => lua.create_string(&out.buf),
        Err(e) if e.is_io() => {
            Err(mlua::Error::MemoryError("json.encode: the text would exceed the hook's memory limit".into()))
        }
        Err(e) => Err(located(lua, format_args!("json.encode: {e}"))),
    }
}

struct Capped {
    buf: Vec<u8>,
    room: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.room {
            return Err(io::Error::other("json.encode output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Lua value as JSON. Tables are arrays when they carry the decoded-array
/// metatable or have exactly the keys 1..n (n > 0), objects otherwise.
struct Json<'a> {
    value: &'a Value,
    depth: usize,
    array_mt: &'a Table,
}

impl Json<'_> {
    fn child<'b>(&'b self, value: &'b Value) -> Json<'b> {
        Json { value, depth: self.depth + 1, array_mt: self.array_mt }
    }

    fn is_array(&self, table: &Table) -> mlua::Result<Option<usize>> {
        let len = table.raw_len();
        if table.metatable().is_some_and(|mt| mt.to_pointer() == self.array_mt.to_pointer()) {
            return Ok(Some(len));
        }
        if len == 0 {
            return Ok(None);
        }
        let mut pairs = 0usize;
        let mut sequence = true;
        table.for_each(|key: Value, _: Value| {
            pairs += 1;
            sequence &= matches!(key, Value::Integer(i) if i >= 1 && i as usize <= len);
            Ok(())
        })?;
        Ok((sequence && pairs == len).then_some(len))
    }

    fn table<S: Serializer>(&self, table: &Table, serializer: S) -> Result<S::Ok, S::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(ser::Error::custom(format!(
                "tables nested deeper than {MAX_DEPTH} levels (or a table that contains itself)"
            )));
        }
        if let Some(len) = self.is_array(table).map_err(ser::Error::custom)? {
            let mut seq = serializer.serialize_seq(Some(len))?;
            for i in 1..=len {
                let item: Value = table.raw_get(i).map_err(ser::Error::custom)?;
                seq.serialize_element(&self.child(&item))?;
            }
            return seq.end();
        }
        let mut map = serializer.serialize_map(None)?;
        let mut failed = None;
        let walked = table.for_each(|key: Value, item: Value| {
            let entry = match &key {
                Value::String(s) => match s.to_str() {
                    Ok(k) => map.serialize_entry(&*k, &self.child(&item)),
                    Err(_) => Err(ser::Error::custom("cannot encode a key that is not valid UTF-8")),
                },
                Value::Integer(i) => map.serialize_entry(&i.to_string(), &self.child(&item)),
                other => Err(ser::Error::custom(format!("cannot encode a table key of type {}", other.type_name()))),
            };
            entry.map_err(|e| {
                failed = Some(e);
                mlua::Error::runtime("")
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        walked.map_err(ser::Error::custom)?;
        map.end()
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Nil => serializer.serialize_unit(),
            Value::LightUserData(ud) if ud.0.is_null() => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Integer(i) => serializer.serialize_i64(*i),
            Value::Number(n) if n.is_finite() => serializer.serialize_f64(*n),
            Value::Number(_) => Err(ser::Error::custom("cannot encode NaN or infinity")),
            Value::String(s) => match s.to_str() {
                Ok(text) => serializer.serialize_str(&text),
                Err(_) => Err(ser::Error::custom("cannot encode a string that is not valid UTF-8")),
            },
            Value::Table(t) => self.table(t, serializer),
            other => Err(ser::Error::custom(format!("cannot encode a {}", other.type_name()))),
        }
    }
}

fn decode(lua: &Lua, text: Value) -> mlua::Result<Value> {
    let Value::String(text) = text else {
        return Err(located(lua, format!("json.decode expects a string, got {}", text.type_name())));
    };
    let bytes = text.as_bytes();
    let lua_error = RefCell::new(None);
    let array_mt = lua.array_metatable();
    let seed = LuaSeed { lua, array_mt: &array_mt, lua_error: &lua_error };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let decoded = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    decoded.map_err(|e| match lua_error.into_inner() {
        // A VM error (out of memory, mostly) is reported as itself.
        Some(vm_error) => vm_error,
        None => located(lua, format_args!("json.decode: {e}")),
    })
}

/// Builds Lua values straight from the parser, so decoding allocates in
/// the VM (under its memory limit) rather than in an intermediate
/// `serde_json::Value`. serde_json's recursion limit bounds the nesting.
#[derive(Clone, Copy)]
struct LuaSeed<'a> {
    lua: &'a Lua,
    array_mt: &'a Table,
    lua_error: &'a RefCell<Option<mlua::Error>>,
}

impl LuaSeed<'_> {
    fn lift<T, E: de::Error>(self, r: mlua::Result<T>) -> Result<T, E> {
        r.map_err(|e| {
            let message = e.to_string();
            *self.lua_error.borrow_mut() = Some(e);
            E::custom(message)
        })
    }
}

impl<'de> DeserializeSeed<'de> for LuaSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LuaSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.lift(self.lua.create_string(v)).map(Value::String)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.lua.null())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let table = self.lift(self.lua.create_table())?;
        let mut i = 0usize;
        while let Some(item) = seq.next_element_seed(self)? {
            i += 1;
            self.lift(table.raw_set(i, item))?;
        }
        self.lift(table.set_metatable(Some(self.array_mt.clone())))?;
        Ok(Value::Table(table))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let table = self.lift(self.lua.create_table())?;
        while let Some(key) = map.next_key_seed(self)? {
            let item = map.next_value_seed(self)?;
            self.lift(table.raw_set(key, item))?;
        }
        Ok(Value::Table(table))
    }
}
