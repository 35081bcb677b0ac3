//! Arbitrary bytes into the NAR decoder. Invariants: no panic; an input the decoder accepts is
//! canonical, so transcribing its events through the encoder gives back exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nar_core::read::{read_nar, NarEvent, ReadError};
use nar_core::write::NarWriter;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let mut writer = NarWriter::new(&mut out);
    let mut contents: Vec<u8> = Vec::new();
    let mut executable = false;
    let mut input = data;
    let result = read_nar(&mut input, |event, _| {
        match event {
            NarEvent::Directory => writer.directory().unwrap(),
            NarEvent::Entry { name } => writer.entry(name).unwrap(),
            NarEvent::DirectoryEnd => writer.directory_end().unwrap(),
            NarEvent::File { executable: x, .. } => {
                executable = x;
                contents.clear();
            }
            NarEvent::Data(bytes) => contents.extend_from_slice(bytes),
            NarEvent::FileEnd => writer.file_bytes(executable, &contents).unwrap(),
            NarEvent::Symlink { target } => writer.symlink(target).unwrap(),
            NarEvent::End => {}
        }
        Ok::<(), ReadError>(())
    });
    if let Ok(digest) = result {
        writer.finish().unwrap();
        let consumed = digest.size as usize;
        assert_eq!(&out[..], &data[..consumed], "accepted input is not canonical");
    }
});
