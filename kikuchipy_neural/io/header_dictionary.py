"""The preset dictionary of the model file's header stream (format 5 on).

The header of a model file is a short JSON document whose keys, option names
and most values (the fit's defaults) are those of every other header, so it
is stored as a raw deflate stream that starts with this dictionary in its
window (:func:`~kikuchipy_neural.io.array_codec.compress_header`): what the
header shares with it costs a few bytes per match instead of its spelling.
On the real crop's rank-2 and rank-3 models the header (without its history,
stored apart) packs to 0.35 kB, where LZMA alone packed it to 1.2 kB.

These bytes are part of format version 5: a file's header decodes only
with them, so they must never change (a new dictionary needs a new format
version, and readers keep this one for format-5 files). They are the
headers, storage lengths zeroed, that format 5 wrote for a model fitted with
the default options (``max_steps=40``, ``seed=0``) to
``synthetic_polycrystal((12, 12), (32, 32), seed=0)``: saved at float16, and
at int8 with ``balanced_bases=True`` (last: deflate's matches are cheapest
nearest the data, and small files are int8).
"""

HEADER_DICTIONARY = (
    b'{"precision":"float16","package_version":"0.1.0.dev0","field":{"formulat'
    b'ion":"factorized","rank":2,"pattern_shape":[32,32],"width":512,"layers":'
    b'5,"first_omega_0":30.0,"hidden_omega_0":30.0},"geometry":{"nx":12,"ny":1'
    b'2,"x0":0.0,"y0":0.0,"dx":1.0,"dy":1.0,"units":"um","pattern_shape":[32,3'
    b'2]},"scan_positions":false,"intensity_range":[6449.0,53040.0],"network_d'
    b'type":"<f2","detector":{"shape":[32,32],"px_size":70.0,"binning":15,"til'
    b't":0.0,"azimuthal":0.0,"twist":0.0,"sample_tilt":70.0,"convention":"bruk'
    b'er","pc_shape":[1,3]},"phases":[{"id":0,"name":"ni","space_group":225,"p'
    b'oint_group":"m-3m","color":"tab:blue","structure":{"lattice":[0.35236,0.'
    b'35236,0.35236,90.0,90.0,90.0],"atoms":[[28,0.0,0.0,0.0,1.0,0.00443280208'
    b'8558674]]}}],"spectrum":{"total_variance":1.2208120706198098,"noise_vari'
    b'ance":0.0003636190085671842,"n_samples":144,"n_pixels":1024,"n_eigenvalu'
    b'es":32},"history_bytes":227,"options":{"siren_width":512,"siren_layers":'
    b'5,"first_omega_0":30.0,"hidden_omega_0":30.0,"band_weight":2.0,"band_top'
    b'_fraction":0.15,"band_fraction_range":[0.15,0.5],"basis_l2":1e-06,"loss"'
    b':"mse","lr":0.0001,"warmup_steps":4000,"plateau_factor":0.5,"plateau_pat'
    b'ience":10,"min_lr":1e-06,"patience":30,"min_delta":1e-05,"sampler":"posi'
    b'tions","positions_per_batch":1024,"pixels_per_position":null,"batch_size'
    b'":32768,"warm_start":true,"warm_start_patience":10,"warm_start_plateau_p'
    b'atience":1,"warm_start_lr":0.0002,"warm_start_positions":null,"lr_ramp_s'
    b'teps":200,"fourier_features":256,"fourier_sigma":3.0,"curriculum_steps":'
    b'20000,"curriculum_start":0.25,"lr_halving_steps":40000,"grad_clip":null,'
    b'"validation_fraction":0.05,"max_validation_points":2048,"eval_every":25,'
    b'"pca_samples":200000,"checkpoint":null,"memory_budget":2147483648,"preci'
    b'sion":"float32","refit_bases":true,"point_intensity":false,"formulation"'
    b':"factorized","seed":0},"info":{"stop_reason":"max_steps","steps":40,"se'
    b'conds":5.785977006999019,"n_train_points":128,"n_val_points":16,"data_dt'
    b'ype":"uint16","world_size":1,"refit_bases":{"applied":true,"reason":null'
    b',"points":128,"validation_mae_before":1222.2868215944618,"validation_mae'
    b'_after":1202.44825527817,"seconds":0.11373346300388221}},"created":"2026'
    b'-12-03T17:42:39+00:00","point_intensity":false,"storage":[["shuffle-lzma'
    b'",0],["none",0],["lzma",0],["shuffle-lzma",0],["shuffle-lzma",0]]}{"prec'
    b'ision":"int8","package_version":"0.1.0.dev0","field":{"formulation":"fac'
    b'torized","rank":2,"pattern_shape":[32,32],"width":512,"layers":5,"first_'
    b'omega_0":30.0,"hidden_omega_0":30.0},"geometry":{"nx":12,"ny":12,"x0":0.'
    b'0,"y0":0.0,"dx":1.0,"dy":1.0,"units":"um","pattern_shape":[32,32]},"scan'
    b'_positions":false,"intensity_range":[6449.0,53040.0],"network_dtype":"<f'
    b'2","detector":{"shape":[32,32],"px_size":70.0,"binning":15,"tilt":0.0,"a'
    b'zimuthal":0.0,"twist":0.0,"sample_tilt":70.0,"convention":"bruker","pc_s'
    b'hape":[1,3]},"phases":[{"id":0,"name":"ni","space_group":225,"point_grou'
    b'p":"m-3m","color":"tab:blue","structure":{"lattice":[0.35236,0.35236,0.3'
    b'5236,90.0,90.0,90.0],"atoms":[[28,0.0,0.0,0.0,1.0,0.004432802088558674]]'
    b'}}],"spectrum":{"total_variance":1.2208120706198098,"noise_variance":0.0'
    b'003636190085671842,"n_samples":144,"n_pixels":1024,"n_eigenvalues":32},"'
    b'history_bytes":219,"options":{"siren_width":512,"siren_layers":5,"first_'
    b'omega_0":30.0,"hidden_omega_0":30.0,"band_weight":2.0,"band_top_fraction'
    b'":0.15,"band_fraction_range":[0.15,0.5],"basis_l2":1e-06,"loss":"mse","l'
    b'r":0.0001,"warmup_steps":4000,"plateau_factor":0.5,"plateau_patience":10'
    b',"min_lr":1e-06,"patience":30,"min_delta":1e-05,"sampler":"positions","p'
    b'ositions_per_batch":1024,"pixels_per_position":null,"batch_size":32768,"'
    b'warm_start":true,"warm_start_patience":10,"warm_start_plateau_patience":'
    b'1,"warm_start_lr":0.0002,"warm_start_positions":null,"lr_ramp_steps":200'
    b',"fourier_features":256,"fourier_sigma":3.0,"curriculum_steps":20000,"cu'
    b'rriculum_start":0.25,"lr_halving_steps":40000,"grad_clip":null,"validati'
    b'on_fraction":0.05,"max_validation_points":2048,"eval_every":25,"pca_samp'
    b'les":200000,"checkpoint":null,"memory_budget":2147483648,"precision":"fl'
    b'oat32","refit_bases":true,"point_intensity":false,"formulation":"factori'
    b'zed","seed":0},"info":{"stop_reason":"max_steps","steps":40,"seconds":5.'
    b'785977006999019,"n_train_points":128,"n_val_points":16,"data_dtype":"uin'
    b't16","world_size":1,"refit_bases":{"applied":true,"reason":null,"points"'
    b':128,"validation_mae_before":1222.2868215944618,"validation_mae_after":1'
    b'202.44825527817,"seconds":0.11373346300388221}},"created":"2026-12-03T17'
    b':42:38+00:00","point_intensity":false,"bases_differenced":false,"storage'
    b'":[["lzma",0],["none",0],["none",0],["none",0],["lzma",0],["shuffle-lzma'
    b'",0],["none",0],["shuffle-lzma",0],["shuffle-lzma",0],["shuffle-lzma",0]'
    b"]}"
)
