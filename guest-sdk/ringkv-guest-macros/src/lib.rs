//! The `#[validate]`, `#[ttl]` and `#[partition]` attributes of
//! `ringkv-guest`. Each keeps the user's function as written and adds the
//! stage's `extern "C"` export (`ringkv_validate`, `ringkv_ttl`,
//! `ringkv_partition`), which decodes the host's input record, calls the
//! function and encodes its answer (see ABI.md). Use them through
//! `ringkv_guest::{validate, ttl, partition}`.
//!
//! Mistakes in the signature are reported at the offending token with the
//! expected signature; type mistakes only the compiler can see are caught by
//! a coercion to the expected fn-pointer type spanned at the function's name.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, Item, ItemFn, ReturnType, Type};

/// The kind of parameter a stage function takes.
#[derive(Clone, Copy)]
enum Param {
    /// `&[u8]`, named in messages.
    Bytes(&'static str),
    /// `&Ctx`.
    Ctx,
}

/// What one attribute generates and expects.
struct Stage {
    attribute: &'static str,
    export: &'static str,
    runner: &'static str,
    params: &'static [Param],
    /// The fn-pointer type the user's function must coerce to, `_` for the
    /// return type (checked by the runner's trait bound instead, so `impl
    /// Trait` returns work).
    pointer: fn() -> TokenStream2,
    expected: &'static str,
}

const VALIDATE: Stage = Stage {
    attribute: "validate",
    export: "ringkv_validate",
    runner: "run_validate",
    params: &[Param::Bytes("key"), Param::Bytes("value"), Param::Ctx],
    pointer: || quote!(fn(&[u8], &[u8], &::ringkv_guest::Ctx) -> _),
    expected: "fn(key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String>",
};

const TTL: Stage = Stage {
    attribute: "ttl",
    export: "ringkv_ttl",
    runner: "run_ttl",
    params: &[Param::Bytes("key"), Param::Bytes("value"), Param::Ctx],
    pointer: || quote!(fn(&[u8], &[u8], &::ringkv_guest::Ctx) -> _),
    expected: "fn(key: &[u8], value: &[u8], ctx: &Ctx) -> Option<Duration> (or -> Ttl)",
};

const PARTITION: Stage = Stage {
    attribute: "partition",
    export: "ringkv_partition",
    runner: "run_partition",
    params: &[Param::Bytes("key")],
    pointer: || quote!(fn(&[u8]) -> _),
    expected: "fn(key: &[u8]) -> RoutingKey",
};

/// Makes `fn(key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String>` the
/// module's `validate` hook (export `ringkv_validate`). The value is empty
/// for a delete; `Err(reason)` rejects the write with `reason`.
#[proc_macro_attribute]
pub fn validate(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&VALIDATE, attr.into(), item.into()).into()
}

/// Makes `fn(key: &[u8], value: &[u8], ctx: &Ctx) -> impl IntoTtl` (e.g.
/// `Option<Duration>` or `Ttl`) the module's `ttl` hook (export
/// `ringkv_ttl`).
#[proc_macro_attribute]
pub fn ttl(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&TTL, attr.into(), item.into()).into()
}

/// Makes `fn(key: &[u8]) -> RoutingKey` (or anything `Into<RoutingKey>`) the
/// module's partitioner (export `ringkv_partition`).
#[proc_macro_attribute]
pub fn partition(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&PARTITION, attr.into(), item.into()).into()
}

fn expand(stage: &Stage, attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    match try_expand(stage, attr, item.clone()) {
        Ok(out) => out,
        // Keep the item so one mistake does not cascade into "cannot find
        // function" errors wherever it is used.
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#item #e)
        }
    }
}

fn try_expand(stage: &Stage, attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let name = stage.attribute;
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(attr, format!("`#[{name}]` takes no arguments")));
    }
    let function = match syn::parse2::<Item>(item)? {
        Item::Fn(f) => f,
        other => {
            return Err(syn::Error::new(
                item_span(&other),
                format!("`#[{name}]` goes on a function: `{}`", stage.expected),
            ))
        }
    };
    let ret = check_signature(stage, &function)?;

    let ident = &function.sig.ident;
    let export = syn::Ident::new(stage.export, Span::call_site());
    let runner = syn::Ident::new(stage.runner, Span::call_site());
    let pointer = (stage.pointer)();
    let hook = quote_spanned!(ident.span()=> let hook: #pointer = #ident;);
    let call = quote_spanned!(ret.span()=>
        // SAFETY: `(ptr, len)` is the input the host wrote into the block
        // `ringkv_alloc` returned (ABI.md, "One call").
        unsafe { ::ringkv_guest::__private::#runner(ptr, len, hook) }
    );
    Ok(quote! {
        #function

        // In an anonymous const so the export's Rust name cannot clash with
        // the user's items; `no_mangle` exports it from the module anyway.
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn #export(ptr: i32, len: i32) -> i64 {
                #hook
                #call
            }
        };
    })
}

fn item_span(item: &Item) -> Span {
    // Point at the item's keyword and name rather than its whole body.
    match item {
        Item::Struct(s) => s.struct_token.span.join(s.ident.span()).unwrap_or(s.ident.span()),
        Item::Enum(e) => e.enum_token.span.join(e.ident.span()).unwrap_or(e.ident.span()),
        other => other.span(),
    }
}

/// Checks what syntax can show; returns the declared return type.
fn check_signature<'f>(stage: &Stage, function: &'f ItemFn) -> syn::Result<&'f Type> {
    let name = stage.attribute;
    let expected = stage.expected;
    let sig = &function.sig;
    let wrong = |tokens: &dyn ToTokens, what: &str| {
        syn::Error::new_spanned(
            tokens.to_token_stream(),
            format!("`#[{name}]` functions {what}; expected `{expected}`"),
        )
    };
    if let Some(t) = &sig.asyncness {
        return Err(wrong(t, "cannot be `async` (hooks run synchronously inside a write)"));
    }
    if let Some(t) = &sig.unsafety {
        return Err(wrong(t, "cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(wrong(abi, "cannot have an `extern` ABI (the attribute generates the export)"));
    }
    if let Some(v) = &sig.variadic {
        return Err(wrong(v, "cannot be variadic"));
    }
    if let Some(p) = sig.generics.params.iter().find(|p| !matches!(p, GenericParam::Lifetime(_))) {
        return Err(wrong(p, "cannot be generic"));
    }
    if let Some(w) = &sig.generics.where_clause {
        return Err(wrong(w, "cannot have a `where` clause"));
    }
    let count = stage.params.len();
    if sig.inputs.len() != count {
        let what =
            format!("take {count} parameter{}, this one takes {}", if count == 1 { "" } else { "s" }, sig.inputs.len());
        return Err(if sig.inputs.is_empty() {
            syn::Error::new(sig.paren_token.span.join(), format!("`#[{name}]` functions {what}; expected `{expected}`"))
        } else {
            wrong(&sig.inputs, &what)
        });
    }
    for (arg, param) in sig.inputs.iter().zip(stage.params) {
        let ty = match arg {
            FnArg::Receiver(r) => return Err(wrong(r, "cannot take `self`")),
            FnArg::Typed(t) => &*t.ty,
        };
        match param {
            Param::Bytes(what) if !is_byte_slice_ref(ty) => {
                return Err(wrong(ty, &format!("take the {what} as `&[u8]`")));
            }
            Param::Ctx if !is_ctx_ref(ty) => return Err(wrong(ty, "take the context as `&Ctx`")),
            _ => {}
        }
    }
    match &sig.output {
        ReturnType::Type(_, ty) => Ok(ty),
        ReturnType::Default => Err(syn::Error::new(
            sig.paren_token.span.close(),
            format!("`#[{name}]` functions must declare a return type; expected `{expected}`"),
        )),
    }
}

/// `&[u8]` (with any lifetime, not `mut`).
fn is_byte_slice_ref(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    let Type::Slice(s) = &*r.elem else { return false };
    r.mutability.is_none() && matches!(&*s.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8"))
}

/// `&Ctx` or `&some::path::Ctx`; the fn-pointer coercion then checks it
/// really is `ringkv_guest::Ctx`.
fn is_ctx_ref(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    let Type::Path(p) = &*r.elem else { return false };
    r.mutability.is_none()
        && p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Ctx" && s.arguments.is_none())
}
